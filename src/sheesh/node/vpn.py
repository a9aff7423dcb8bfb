"""Per-VM OpenVPN servers (rerobots instance VPNs): one ``openvpn`` process per VM, owned by the node and
found again by its PID file after a restart of the service, with a tun device named after the VM
(``VmNet.vpn_tun``). Clients get an address of the VPN's /24 and a single route, to the VM; the node's
nftables rules (``network.py``) let them reach that VM and nothing else."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Callable
from pathlib import Path

from sheesh.errors import UnavailableError
from sheesh.node.contract import VmNet, VpnSpec
from sheesh.node.errors import NodeError
from sheesh.vmm.driver import VmmError
from sheesh.vmm.process import ManagedProcess

VPN_DIR = "vpn"
CONFIG = "server.conf"
PID_FILE = "openvpn.pid"
LOG_FILE = "openvpn.log"
READY_LINE = "Initialization Sequence Completed"
START_TIMEOUT_S = 20.0


def server_config(spec: VpnSpec, folder: Path) -> str:
    net = ipaddress.IPv4Network(spec.network)
    tun = VmNet(vm_id=spec.vm_id, ip=spec.guest_ip).vpn_tun
    return "\n".join(
        [
            f"dev {tun}",
            "dev-type tun",
            "proto udp",
            f"port {spec.port}",
            "topology subnet",
            f"server {net.network_address} {net.netmask}",
            f'push "route {spec.guest_ip} 255.255.255.255"',
            "keepalive 5 30",
            "dh none",
            "remote-cert-tls client",
            "tls-version-min 1.2",
            "persist-key",
            "persist-tun",
            "verb 3",
            f"writepid {folder / PID_FILE}",
            f"<ca>\n{spec.ca_pem.strip()}\n</ca>",
            f"<cert>\n{spec.cert_pem.strip()}\n</cert>",
            f"<key>\n{spec.key_pem.strip()}\n</key>",
            "",
        ]
    )


class VpnServers:
    """``workdir_of(vm_id)``: the VM's folder on the node. ``enabled``: the node has VM networking."""

    def __init__(self, workdir_of: Callable[[str], Path], *, enabled: bool) -> None:
        self._workdir_of = workdir_of
        self.enabled = enabled
        self._procs: dict[str, ManagedProcess] = {}

    def _folder(self, vm_id: str) -> Path:
        return self._workdir_of(vm_id) / VPN_DIR

    async def start(self, spec: VpnSpec) -> None:
        if not self.enabled:
            raise UnavailableError("VPNs need VM networking on this node")
        if shutil.which("openvpn") is None:
            raise UnavailableError("openvpn is not installed on this node")
        await self.stop(spec.vm_id)
        folder = self._folder(spec.vm_id)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = folder / CONFIG
        config.touch(mode=0o600)
        config.write_text(server_config(spec, folder))
        log = folder / LOG_FILE
        log.write_text("")
        try:
            proc = ManagedProcess.spawn(["openvpn", "--config", str(config)], str(config), log, log, cwd=folder)
        except VmmError as exc:
            raise NodeError(exc.message) from None
        self._procs[spec.vm_id] = proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while READY_LINE not in log.read_text(errors="replace"):
            if not proc.alive() or loop.time() > deadline:
                await self.stop(spec.vm_id)
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                raise NodeError(f"the VPN server did not start: {tail or 'no output'}")
            await asyncio.sleep(0.05)
        # forward what clients send (to the VM only: network.py); forwarding is on per incoming interface
        tun = VmNet(vm_id=spec.vm_id, ip=spec.guest_ip).vpn_tun
        try:
            Path(f"/proc/sys/net/ipv4/conf/{tun}/forwarding").write_text("1\n")
        except OSError as exc:
            await self.stop(spec.vm_id)
            raise NodeError(f"cannot enable forwarding on {tun}: {exc}") from None

    async def stop(self, vm_id: str) -> None:
        folder = self._folder(vm_id)
        proc = self._procs.pop(vm_id, None) or ManagedProcess.adopt(folder / PID_FILE, str(folder / CONFIG))
        if proc is not None:
            await proc.terminate()
        (folder / PID_FILE).unlink(missing_ok=True)

    def running(self, vm_id: str) -> bool:
        proc = self._procs.get(vm_id)
        return proc is not None and proc.alive()
