"""The node contract's rerobots additions (SSH keys, VPN servers), checked against both implementations: the
control plane's fake node and the real node agent running the real guest agent on the fake VMM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sheesh.control.node_client import FakeNodeClient
from sheesh.control.pki import CertificateAuthority
from sheesh.errors import NotFoundError, SheeshError, UnavailableError
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeClient, NodeVmSpec, VpnSpec
from sheesh.node.vpn import server_config
from sheesh.vmm.fake import FakeDriver

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBMa5USXyCPGjrxb9Gmg7etU5TxEynHQAYfgJi0XfDvY me@laptop"


def _spec(tmp: Path, vm_id: str) -> NodeVmSpec:
    rootfs = tmp / "rootfs"
    rootfs.write_text("r")
    return NodeVmSpec(
        vm_id=vm_id, cpu=1, mem_mb=256, kernel=tmp / "k", initrd=tmp / "i", rootfs=rootfs, disk_size_mb=1024
    )


@pytest.fixture(params=["fake", "agent"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NodeClient]:
    impl: NodeClient = FakeNodeClient() if request.param == "fake" else NodeAgent(tmp_path / "vms", FakeDriver())
    await impl.create(_spec(tmp_path, "vm-one"))
    try:
        yield impl
    finally:
        await impl.destroy("vm-one")
        await impl.close()


async def test_authorize_ssh_returns_the_vms_host_keys(node: NodeClient) -> None:
    keys = await node.authorize_ssh("vm-one", [KEY])
    assert len(keys) == 1 and keys[0].startswith("ssh-ed25519 AAAA")
    assert await node.authorize_ssh("vm-one", []) == keys, "the same VM, the same host key"
    with pytest.raises(SheeshError):
        await node.authorize_ssh("vm-none", [KEY])


def _vpn_spec(vm_id: str, network: str) -> VpnSpec:
    ca = CertificateAuthority.generate("ca")
    server = ca.issue("server", server=True)
    return VpnSpec(
        vm_id=vm_id,
        port=1194,
        network=network,
        guest_ip="10.1.0.2",
        ca_pem=ca.cert_pem,
        cert_pem=server.cert_pem,
        key_pem=server.key_pem,
    )


async def test_vpn_servers_need_a_known_vm(node: NodeClient) -> None:
    with pytest.raises(NotFoundError):
        await node.start_vpn(_vpn_spec("vm-none", "10.200.0.0/24"))
    await node.stop_vpn("vm-none")  # stopping what is not running is fine


async def test_the_node_agent_runs_vpns_only_with_vm_networking(tmp_path: Path) -> None:
    agent = NodeAgent(tmp_path / "vms", FakeDriver())
    await agent.create(_spec(tmp_path, "vm-one"))
    spec = _vpn_spec("vm-one", "10.200.3.0/24")
    try:
        with pytest.raises(UnavailableError, match="networking"):
            await agent.start_vpn(spec)
    finally:
        await agent.destroy("vm-one")
        await agent.close()
    conf = server_config(spec, tmp_path)
    assert "server 10.200.3.0 255.255.255.0" in conf and 'push "route 10.1.0.2 255.255.255.255"' in conf
    assert "remote-cert-tls client" in conf and "BEGIN CERTIFICATE" in conf
