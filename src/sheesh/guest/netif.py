"""Guest side: configure the VM's NIC with ioctls (standard library only).

One ``configure`` call gives an interface its MAC, IPv4 address and default route without starting any
process (under TCG each fork+exec of ``ip`` costs tens of milliseconds, and a restored clone must apply its
new identity before its first exec). The request structures are built by pure functions so they can be
checked on any host; only ``configure`` touches the kernel.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import re
import socket
import struct
from dataclasses import dataclass

SIOCADDRT = 0x890B
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFADDR = 0x8915
SIOCSIFADDR = 0x8916
SIOCGIFNETMASK = 0x891B
SIOCSIFNETMASK = 0x891C
SIOCSIFHWADDR = 0x8924
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
RTF_UP = 0x1
RTF_GATEWAY = 0x2
ARPHRD_ETHER = 1
IFREQ_SIZE = 40
# struct rtentry (x86_64/aarch64 LP64): pad1, dst, gateway, genmask, flags, pad2, pad3, pad4, metric, dev,
# mtu, window, irtt; native alignment, then the tail padding of the C struct.
_RTENTRY = struct.Struct("@L16s16s16sHhLPhPLLH")
RTENTRY_SIZE = 120
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class NetifError(Exception):
    """Bad settings or a failed ioctl; the message says which."""


@dataclass(frozen=True)
class NicSettings:
    """What the host assigned to the VM's NIC."""

    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    mac: str

    @classmethod
    def parse(cls, ip: object, prefix: object, gateway: object, mac: object) -> NicSettings:
        """Validated settings; NetifError on any malformed field."""
        try:
            address = ipaddress.IPv4Interface(f"{ip}/{int(str(prefix))}")
            gw = ipaddress.IPv4Address(str(gateway))
        except ValueError as exc:
            raise NetifError(f"bad network settings: {exc}") from None
        mac_text = str(mac).lower()
        if not _MAC.match(mac_text):
            raise NetifError(f"bad MAC address {mac_text!r}")
        if gw not in address.network:
            raise NetifError(f"gateway {gw} is not in {address.network}")
        return cls(address, gw, mac_text)


def _name(dev: str) -> bytes:
    raw = dev.encode()
    if not raw or len(raw) > 15:
        raise NetifError(f"bad interface name {dev!r}")
    return raw.ljust(16, b"\0")


def sockaddr_in(addr: ipaddress.IPv4Address) -> bytes:
    """A 16-byte ``struct sockaddr_in`` (port 0)."""
    return struct.pack("=HH4s8x", socket.AF_INET, 0, addr.packed)


def ifreq_addr(dev: str, addr: ipaddress.IPv4Address) -> bytes:
    """``struct ifreq`` carrying an IPv4 address (SIOCSIFADDR, SIOCSIFNETMASK)."""
    return (_name(dev) + sockaddr_in(addr)).ljust(IFREQ_SIZE, b"\0")


def ifreq_hwaddr(dev: str, mac: str) -> bytes:
    """``struct ifreq`` carrying an Ethernet address (SIOCSIFHWADDR)."""
    return (_name(dev) + struct.pack("=H6s", ARPHRD_ETHER, bytes.fromhex(mac.replace(":", "")))).ljust(
        IFREQ_SIZE, b"\0"
    )


def ifreq_flags(dev: str, flags: int) -> bytes:
    """``struct ifreq`` carrying interface flags (SIOCSIFFLAGS)."""
    return (_name(dev) + struct.pack("=H", flags)).ljust(IFREQ_SIZE, b"\0")


def flags_of(ifreq: bytes) -> int:
    """The flags a SIOCGIFFLAGS answer carries."""
    return int(struct.unpack_from("=H", ifreq, 16)[0])


def hwaddr_of(ifreq: bytes) -> str:
    """The MAC a SIOCGIFHWADDR answer carries (``aa:bb:...``)."""
    return ifreq[18:24].hex(":")


def addr_of(ifreq: bytes) -> ipaddress.IPv4Address:
    """The IPv4 address a SIOCGIFADDR / SIOCGIFNETMASK answer carries."""
    return ipaddress.IPv4Address(ifreq[20:24])


def rtentry_default(gateway: ipaddress.IPv4Address) -> bytes:
    """``struct rtentry`` for ``default via gateway`` (the kernel picks the device from the gateway)."""
    zero = sockaddr_in(ipaddress.IPv4Address(0))
    entry = _RTENTRY.pack(0, zero, sockaddr_in(gateway), zero, RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
    return entry.ljust(RTENTRY_SIZE, b"\0")


def configure(dev: str, nic: NicSettings) -> list[str]:
    """Give ``dev`` the MAC, the address and netmask, bring it up and route the default via the gateway.
    Only what differs is changed: the MAC is changed live when the driver allows it (virtio-net does), else
    with the link down; the previous primary address is replaced. Returns the names of the steps taken
    (a restored clone takes "mac", "address", "route"). NetifError on failure."""
    steps: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        def ioctl(request: int, arg: bytes, what: str) -> bytes:
            try:
                return bytes(fcntl.ioctl(sock.fileno(), request, arg))
            except OSError as exc:
                raise NetifError(f"{what} on {dev}: {exc.strerror}") from None

        def current(request: int) -> ipaddress.IPv4Address | None:
            try:
                return addr_of(bytes(fcntl.ioctl(sock.fileno(), request, ifreq_flags(dev, 0))))
            except OSError:  # EADDRNOTAVAIL: no address yet
                return None

        flags = flags_of(ioctl(SIOCGIFFLAGS, ifreq_flags(dev, 0), "read flags"))
        if hwaddr_of(ioctl(SIOCGIFHWADDR, ifreq_flags(dev, 0), "read MAC")) != nic.mac:
            steps.append("mac")
            try:
                fcntl.ioctl(sock.fileno(), SIOCSIFHWADDR, ifreq_hwaddr(dev, nic.mac))
            except OSError as exc:
                if exc.errno != errno.EBUSY or not flags & IFF_UP:
                    raise NetifError(f"set MAC on {dev}: {exc.strerror}") from None
                ioctl(SIOCSIFFLAGS, ifreq_flags(dev, flags & ~IFF_UP), "link down")
                ioctl(SIOCSIFHWADDR, ifreq_hwaddr(dev, nic.mac), "set MAC")
                flags &= ~IFF_UP
        if current(SIOCGIFADDR) != nic.address.ip or current(SIOCGIFNETMASK) != nic.address.netmask:
            steps.append("address")
            ioctl(SIOCSIFADDR, ifreq_addr(dev, nic.address.ip), "set address")
            ioctl(SIOCSIFNETMASK, ifreq_addr(dev, nic.address.netmask), "set netmask")
        if not flags & IFF_UP:
            steps.append("up")
            ioctl(SIOCSIFFLAGS, ifreq_flags(dev, flags | IFF_UP), "link up")
        try:  # a new address or a link that was down lost the routes through it; else this is EEXIST
            fcntl.ioctl(sock.fileno(), SIOCADDRT, rtentry_default(nic.gateway))
            steps.append("route")
        except FileExistsError:
            pass
        except OSError as exc:
            raise NetifError(f"default route via {nic.gateway}: {exc.strerror}") from None
    return steps
