"""Instance VPNs (rerobots ``/vpn/:id``): each instance that asks for one gets an OpenVPN server on its node
with its own certificate authority (made here, kept in ``<data_dir>/vpn/<instance>/``), a UDP port from
``vpn_port_range`` and a /24 of ``vpn_network``; each client gets a certificate of that authority inside an
``.ovpn`` file. Clients reach the instance's VM, whatever its firewall says, and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sheesh.config import Settings
from sheesh.control.ipam import free_port
from sheesh.control.pki import CertificateAuthority
from sheesh.control.vms import VmService
from sheesh.errors import ConflictError, SheeshError, UnavailableError
from sheesh.node.contract import VpnSpec
from sheesh.secretfile import write_secret
from sheesh.store.repo import Store
from sheesh.workspaces import ACTIVE_INSTANCE, Instance, VpnClient, VpnStatus

log = logging.getLogger(__name__)

MAX_CLIENTS = 32


def client_config(host: str, port: int, ca_pem: str, cert_pem: str, key_pem: str) -> str:
    """An ``.ovpn`` file for ``openvpn --config``."""
    return "\n".join(
        [
            "client",
            "dev tun",
            "proto udp",
            f"remote {host} {port}",
            "nobind",
            "remote-cert-tls server",
            "tls-version-min 1.2",
            "persist-key",
            "persist-tun",
            "verb 3",
            f"<ca>\n{ca_pem.strip()}\n</ca>",
            f"<cert>\n{cert_pem.strip()}\n</cert>",
            f"<key>\n{key_pem.strip()}\n</key>",
            "",
        ]
    )


@dataclass
class VpnService:
    store: Store
    settings: Settings
    vms: VmService
    _alloc: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _folder(self, instance_id: str) -> Path:
        return self.settings.data_dir / "vpn" / instance_id

    def _ca(self, inst: Instance) -> CertificateAuthority:
        path = self._folder(inst.id) / "ca.json"
        if path.exists():
            raw = json.loads(path.read_text())
            return CertificateAuthority(raw["key_pem"], raw["cert_pem"])
        ca = CertificateAuthority.generate(f"sheesh VPN {inst.id}")
        write_secret(path, json.dumps({"key_pem": ca.key_pem, "cert_pem": ca.cert_pem}))
        return ca

    def _allocate(self, inst: Instance) -> None:
        others = [i for i in self.store.list_records(Instance) if i.id != inst.id and i.status in ACTIVE_INSTANCE]
        if inst.vpn_port is None:
            inst.vpn_port = free_port(self.settings.vpn_port_range, {i.vpn_port for i in others if i.vpn_port}, "udp")
        if inst.vpn_network is None:
            used = {i.vpn_network for i in others}
            pool = ipaddress.IPv4Network(self.settings.vpn_network)
            inst.vpn_network = next((str(n) for n in pool.subnets(new_prefix=24) if str(n) not in used), None)
            if inst.vpn_network is None:
                raise UnavailableError(f"no free /24 left in the VPN network {pool}")

    async def start(self, inst: Instance) -> None:
        """Run the instance's VPN server (again, after a restart); the VPN status becomes ready, or nil with
        the reason in the instance's ``error``."""
        vm = self.vms.get(inst.vm_id or "")
        try:
            async with self._alloc:
                self._allocate(inst)
                self.store.save_record(inst)
            assert inst.vpn_port is not None and inst.vpn_network is not None
            ca = await asyncio.to_thread(self._ca, inst)
            server = await asyncio.to_thread(ca.issue, "server", server=True)
            spec = VpnSpec(
                vm_id=vm.id,
                port=inst.vpn_port,
                network=inst.vpn_network,
                guest_ip=vm.guest_ip,
                ca_pem=ca.cert_pem,
                cert_pem=server.cert_pem,
                key_pem=server.key_pem,
            )
            await self.vms.set_vpn_network(vm.id, inst.vpn_network)
            await self.vms.node_of(spec.vm_id).start_vpn(spec)
            inst.vpn = VpnStatus.READY
        except SheeshError as exc:
            log.warning("VPN of instance %s: %s", inst.id, exc.message)
            inst.vpn, inst.error = VpnStatus.NIL, f"the VPN could not be started: {exc.message}"
        self.store.save_record(inst)

    async def stop(self, inst: Instance) -> None:
        if inst.vm_id is not None:
            with contextlib.suppress(SheeshError):
                await self.vms.node_of(inst.vm_id).stop_vpn(inst.vm_id)
        for client in self.clients(inst):
            self.store.delete_record(VpnClient, client.id)
        await asyncio.to_thread(shutil.rmtree, self._folder(inst.id), True)

    def clients(self, inst: Instance) -> list[VpnClient]:
        return [c for c in self.store.list_records(VpnClient) if c.instance_id == inst.id]

    def client_ids(self, inst: Instance) -> list[str]:
        return [c.id for c in self.clients(inst)]

    async def new_client(self, inst: Instance, owner_id: str | None) -> tuple[str, str]:
        """A new client's id and ``.ovpn`` (holding its private key: returned once, never stored)."""
        if inst.vpn != VpnStatus.READY or inst.vpn_port is None:
            raise ConflictError(f"the instance's VPN is {inst.vpn.value}; it must be ready")
        if len(self.clients(inst)) >= MAX_CLIENTS:
            raise ConflictError(f"a VPN has at most {MAX_CLIENTS} clients")
        client_id = str(uuid.uuid4())
        ca = await asyncio.to_thread(self._ca, inst)
        issued = await asyncio.to_thread(ca.issue, client_id, server=False)
        self.store.add_record(
            VpnClient(id=client_id, instance_id=inst.id, owner_id=owner_id, created_at=datetime.now(UTC))
        )
        host = self.vms.nodes.public_host(self.vms.get(inst.vm_id).node) if inst.vm_id else self.settings.node_host()
        ovpn = client_config(host, inst.vpn_port, ca.cert_pem, issued.cert_pem, issued.key_pem)
        return client_id, ovpn
