"""VM networking on the host: a sheesh bridge with one isolated tap port per VM, and nftables rules in tables
sheesh owns (``inet <bridge>`` and ``bridge <bridge>``), rebuilt atomically from the full policy on every change.

Per VM (``VmNet``): anti-spoofing on its tap (its MAC and IPv4 only, no IPv6); egress only to ``allow_ips``
(also the only host services it reaches), everything else too with ``outbound_internet`` (masqueraded out of
the uplinks); no traffic between VMs (isolated bridge ports); inbound traffic filtered by its ordered
firewall rules (first match wins, default drop); port forwards from node ports (DNAT).

Host changes: the bridge and taps, the two tables, IPv4 forwarding enabled on the bridge and the uplinks only
(``net.ipv4.conf.<if>.forwarding``) and ``route_localnet`` on the bridge (node-local clients of port forwards).
Nothing else is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sheesh.models import FirewallAction
from sheesh.node.contract import VmNet
from sheesh.node.errors import NodeError

log = logging.getLogger(__name__)


class NetworkError(NodeError):
    """Setting up the host network failed."""


@dataclass(frozen=True)
class NetConfig:
    """The node's VM network: ``bridge`` (also the nftables table name), the guest ``network`` (its first
    address is the bridge's, the guests' gateway), the ``uplinks`` (default: the default-route interface) and
    the guests' ``dns`` servers."""

    bridge: str = "sheesh0"
    network: str = "172.16.0.0/16"
    uplinks: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    """Name servers guests are told to use (they still need egress to reach them)."""

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        net = ipaddress.IPv4Network(self.network)
        return ipaddress.IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")


def _v4_set(cidrs: tuple[str, ...]) -> str | None:
    """An nftables anonymous set of the IPv4 networks in ``cidrs`` (overlaps merged), or None if empty."""
    nets = [n for n in (ipaddress.ip_network(c, strict=False) for c in cidrs) if isinstance(n, ipaddress.IPv4Network)]
    if not nets:
        return None
    return "{ " + ", ".join(str(n) for n in ipaddress.collapse_addresses(nets)) + " }"


def _chain_name(vm: VmNet) -> str:
    return f"in-{vm.tap}"


def _chain(name: str, rules: list[str], hook: str | None = None) -> str:
    head = [f"type {hook}; policy accept;"] if hook else []
    return f"\tchain {name} {{\n" + "".join(f"\t\t{line}\n" for line in head + rules) + "\t}\n"


def _firewall_rules(vm: VmNet) -> list[str]:
    rules = []
    if vm.vpn_network:
        rules.append(f"iifname {json.dumps(vm.vpn_tun)} ip saddr {vm.vpn_network} accept")
    for rule in vm.firewall:
        src = ipaddress.ip_network(rule.src, strict=False)
        if not isinstance(src, ipaddress.IPv4Network):
            continue
        if rule.action == FirewallAction.REJECT:
            rules.append(f"ip saddr {src} meta l4proto tcp reject with tcp reset")
            rules.append(f"ip saddr {src} reject with icmp type admin-prohibited")
        else:
            rules.append(f"ip saddr {src} {rule.action.value.lower()}")
    return [*rules, "drop"]


def render_ruleset(cfg: NetConfig, vms: list[VmNet]) -> str:
    """The whole nftables script (deletes and recreates sheesh's two tables in one transaction)."""
    br = json.dumps(cfg.bridge)
    host_allow: list[str] = []
    egress: list[str] = []
    ingress: list[str] = []
    dnat: list[str] = []
    anti_spoof: list[str] = []
    vpn_only: list[str] = []
    vm_chains = ""
    for vm in sorted(vms, key=lambda v: ipaddress.IPv4Address(v.ip)):
        if allow := _v4_set(vm.allow_ips):
            host_allow.append(f"iifname {br} ip saddr {vm.ip} ip daddr {allow} accept")
            egress.append(f"iifname {br} ip saddr {vm.ip} ip daddr {allow} accept")
        if vm.outbound_internet:
            egress.append(f"iifname {br} ip saddr {vm.ip} oifname != {br} accept")
        ingress.append(f"oifname {br} ip daddr {vm.ip} jump {_chain_name(vm)}")
        if vm.vpn_network:  # a VPN reaches its VM only: not the node, not other VMs, not the LAN
            vpn_only.append(f"iifname {json.dumps(vm.vpn_tun)} ip daddr != {vm.ip} drop")
        vm_chains += _chain(_chain_name(vm), _firewall_rules(vm))
        dnat += [
            f"fib daddr type local {p.protocol} dport {p.host_port} dnat ip to {vm.ip}:{p.guest_port}" for p in vm.ports
        ]
        tap = json.dumps(vm.tap)
        anti_spoof += [
            f"iifname {tap} ether saddr != {vm.mac} drop",
            f"iifname {tap} ether type ip ip saddr != {vm.ip} drop",
            f"iifname {tap} ether type arp arp saddr ip != {vm.ip} drop",
            f"iifname {tap} ether type != {{ ip, arp }} drop",
        ]
    internet = sorted((vm.ip for vm in vms if vm.outbound_internet), key=ipaddress.IPv4Address)
    internet_set = f"\tset internet {{\n\t\ttype ipv4_addr\n\t\telements = {{ {', '.join(internet)} }}\n\t}}\n"
    forward = [
        *vpn_only,
        f"oifname {br} ct state established,related accept",
        f"iifname {br} ct state established,related accept",
        *egress,
        f"iifname {br} drop",
        *ingress,
        f"oifname {br} drop",
    ]
    inet = (
        (internet_set if internet else "")
        + _chain(
            "input",
            [
                f"iifname {br} ct state established,related accept",
                f"iifname {br} ip daddr 127.0.0.0/8 drop",  # route_localnet is on for the bridge: never from guests
                *host_allow,
                f"iifname {br} drop",
                *[f"iifname {json.dumps(vm.vpn_tun)} drop" for vm in vms if vm.vpn_network],
            ],
            "filter hook input priority filter",
        )
        + _chain("forward", forward, "filter hook forward priority filter")
        + vm_chains
        + _chain("prerouting", dnat, "nat hook prerouting priority dstnat")
        + _chain("output", dnat, "nat hook output priority -100")
        + _chain(
            "postrouting",
            [
                # node-local clients of forwarded ports (127.0.0.1:hostPort) reach the guest from the gateway
                f"oifname {br} ip saddr 127.0.0.0/8 masquerade",
                *([f"ip saddr @internet oifname != {br} masquerade"] if internet else []),
            ],
            "nat hook postrouting priority srcnat",
        )
    )
    bridge = _chain("prerouting", anti_spoof, "filter hook prerouting priority filter")
    name = cfg.bridge
    return (
        f"table inet {name} {{}}\ndelete table inet {name}\ntable bridge {name} {{}}\ndelete table bridge {name}\n"
        f"table inet {name} {{\n{inet}}}\ntable bridge {name} {{\n{bridge}}}\n"
    )


def host_nameservers(resolv: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """The host's IPv4 name servers that a guest can use (loopback resolvers such as systemd-resolved's are
    skipped: they only listen on the host)."""
    servers = []
    try:
        for line in resolv.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    addr = ipaddress.ip_address(parts[1])
                    if isinstance(addr, ipaddress.IPv4Address) and not addr.is_loopback:
                        servers.append(str(addr))
    except OSError:
        return ()
    return tuple(servers[:3])


class HostNetwork(Protocol):
    """The host side of VM networking. ``apply`` makes the rules match ``vms`` exactly. Rules name taps
    (they need not exist yet), so ``add_tap`` and ``apply`` may run concurrently; callers serialize ``apply``."""

    config: NetConfig

    async def add_tap(self, vm: VmNet, *, bridged: bool = True) -> None:
        """Create the VM's tap on the bridge (creating the bridge first if needed). Idempotent. ``bridged``
        False: off the bridge, for a warm spare (what its guest sends goes nowhere) until ``claim_tap``."""
        ...

    async def claim_tap(self, spare: VmNet, vm: VmNet) -> None:
        """Rename the spare's tap (made with ``bridged=False``, open in a running machine) to ``vm``'s and put
        it on the bridge."""
        ...

    async def remove_tap(self, vm: VmNet) -> None:
        """Delete the VM's tap. Idempotent."""
        ...

    async def apply(self, vms: list[VmNet]) -> None:
        """Replace sheesh's nftables tables with the rules of ``vms``."""
        ...

    async def intact(self) -> bool:
        """False if sheesh's tables are gone (removed outside sheesh, e.g. ``nft flush ruleset`` by a host
        firewall reload): the caller must ``apply`` again."""
        ...


@dataclass
class FakeNetwork:
    """Records what the node asked for; touches nothing."""

    config: NetConfig = field(default_factory=NetConfig)
    taps: set[str] = field(default_factory=set)
    applied: list[VmNet] = field(default_factory=list)
    rulesets: int = 0
    removed: bool = False
    """Set by a test: the tables were removed behind sheesh's back (until the next ``apply``)."""

    spares: set[str] = field(default_factory=set)

    async def add_tap(self, vm: VmNet, *, bridged: bool = True) -> None:
        (self.taps if bridged else self.spares).add(vm.tap)

    async def claim_tap(self, spare: VmNet, vm: VmNet) -> None:
        self.spares.remove(spare.tap)
        self.taps.add(vm.tap)

    async def remove_tap(self, vm: VmNet) -> None:
        self.taps.discard(vm.tap)
        self.spares.discard(vm.tap)

    async def apply(self, vms: list[VmNet]) -> None:
        render_ruleset(self.config, vms)  # must render
        self.applied = list(vms)
        self.rulesets += 1
        self.removed = False

    async def intact(self) -> bool:
        return not self.removed


async def _run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv[:4])} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


class LinuxNetwork:
    """``HostNetwork`` with iproute2 and nftables (needs root)."""

    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._bridge_lock = asyncio.Lock()
        self._bridge_ready = False

    @staticmethod
    def available() -> bool:
        return all(shutil.which(tool) for tool in ("ip", "nft"))

    async def _uplinks(self) -> tuple[str, ...]:
        if self.config.uplinks:
            return self.config.uplinks
        routes = json.loads(await _run("ip", "-j", "route", "show", "default", check=False) or "[]")
        return tuple(sorted({str(r["dev"]) for r in routes if "dev" in r}))

    async def _ensure_bridge(self) -> None:
        async with self._bridge_lock:
            if not self._bridge_ready:
                await self._make_bridge()

    async def _make_bridge(self) -> None:
        br = self.config.bridge
        if not Path(f"/sys/class/net/{br}").exists():
            await _run("ip", "link", "add", br, "type", "bridge")
        await _run("ip", "addr", "replace", str(self.config.gateway), "dev", br)
        await _run("ip", "link", "set", br, "up")
        # forwarding on the bridge and the uplinks only; route_localnet on the bridge lets node-local clients
        # use 127.0.0.1:hostPort (their source is masqueraded; guests' packets to 127/8 are dropped)
        for dev, key in (
            (br, "forwarding"),
            (br, "route_localnet"),
            *((up, "forwarding") for up in await self._uplinks()),
        ):
            sysctl = Path(f"/proc/sys/net/ipv4/conf/{dev}/{key}")
            try:
                if sysctl.read_text().strip() != "1":
                    sysctl.write_text("1\n")
                    log.info("enabled IPv4 %s on %s", key, dev)
            except OSError as exc:
                raise NetworkError(f"cannot enable {key} on {dev}: {exc}") from exc
        self._bridge_ready = True

    def _bridged(self, tap: str) -> list[str]:
        return [
            f"link set dev {tap} master {self.config.bridge}",
            f"link set dev {tap} type bridge_slave isolated on",
            f"link set dev {tap} up",
        ]

    async def add_tap(self, vm: VmNet, *, bridged: bool = True) -> None:
        await self._ensure_bridge()
        batch = [] if Path(f"/sys/class/net/{vm.tap}").exists() else [f"tuntap add dev {vm.tap} mode tap"]
        batch += self._bridged(vm.tap) if bridged else [f"link set dev {vm.tap} up"]
        await _run("ip", "-batch", "-", stdin="\n".join(batch) + "\n")

    async def claim_tap(self, spare: VmNet, vm: VmNet) -> None:
        await self._ensure_bridge()
        batch = [f"link set dev {spare.tap} down", f"link set dev {spare.tap} name {vm.tap}", *self._bridged(vm.tap)]
        await _run("ip", "-batch", "-", stdin="\n".join(batch) + "\n")

    async def remove_tap(self, vm: VmNet) -> None:
        if Path(f"/sys/class/net/{vm.tap}").exists():
            await _run("ip", "link", "del", vm.tap, check=False)

    async def apply(self, vms: list[VmNet]) -> None:
        await self._ensure_bridge()
        await _run("nft", "-f", "-", stdin=render_ruleset(self.config, vms))

    async def intact(self) -> bool:
        listed = set((await _run("nft", "list", "tables", check=False)).splitlines())
        return {f"table inet {self.config.bridge}", f"table bridge {self.config.bridge}"} <= listed


async def teardown(config: NetConfig) -> None:
    """Remove the bridge, every port on it, and sheesh's tables (``sheesh network down``)."""
    br = config.bridge
    links = json.loads(await _run("ip", "-j", "link", "show", "master", br, check=False) or "[]")
    for link in links:
        await _run("ip", "link", "del", str(link["ifname"]), check=False)
    await _run("ip", "link", "del", br, check=False)
    for family in ("inet", "bridge"):
        await _run("nft", "delete", "table", family, br, check=False)
