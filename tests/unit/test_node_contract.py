"""The node contract, checked against every implementation: the control plane's fake node, the real node agent
running the real guest agent on the fake VMM, and that node agent driven over HTTP (``RemoteNode`` talking to
the node's contract routes, as a control plane on another host does)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from sheesh.control.node_client import FakeNodeClient
from sheesh.control.pki import CertificateAuthority
from sheesh.control.remote_node import RemoteNode
from sheesh.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, SheeshError, UnavailableError
from sheesh.models import ExecRequest, ScriptLanguage, ScriptRequest
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import CONTRACT_OPS, NodeClient, NodeVmSpec, VpnSpec
from sheesh.node.heartbeat import Heartbeat
from sheesh.node.server import contract_routes
from sheesh.node.vpn import server_config
from sheesh.vmm.fake import FakeDriver

TOKEN = "node-secret-for-tests"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBMa5USXyCPGjrxb9Gmg7etU5TxEynHQAYfgJi0XfDvY me@laptop"


def _spec(tmp: Path, vm_id: str) -> NodeVmSpec:
    rootfs = tmp / "rootfs"
    rootfs.write_text("r")
    return NodeVmSpec(
        vm_id=vm_id, cpu=1, mem_mb=256, kernel=tmp / "k", initrd=tmp / "i", rootfs=rootfs, disk_size_mb=1024
    )


def remote(agent: NodeAgent, token: str = TOKEN) -> RemoteNode:
    """``agent`` behind its HTTP contract routes, reached through httpx's in-process ASGI transport."""
    app = Starlette(routes=contract_routes(agent, TOKEN))
    return RemoteNode(agent.name, "http://node.test", token, transport=httpx.ASGITransport(app=app))


@pytest.fixture(params=["fake", "agent", "remote"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NodeClient]:
    impl: NodeClient
    if request.param == "fake":
        impl = FakeNodeClient()
    else:
        impl = NodeAgent(tmp_path / "vms", FakeDriver())
        if request.param == "remote":
            impl = remote(impl)
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


async def test_lifecycle_exec_and_status(node: NodeClient, tmp_path: Path) -> None:
    assert await node.is_running("vm-one") and not await node.is_running("vm-none")
    with pytest.raises(ConflictError, match="already runs"):
        await node.create(_spec(tmp_path, "vm-one"))
    assert "vm-one" in await node.local_vms()
    result = await node.exec("vm-one", ExecRequest("echo hi"), 4096)
    assert result.exit_code == 0 and "hi" in result.stdout
    status = await node.status()
    assert "vm-one" in status.running and status.capacity.vcpus >= 1
    assert await node.reattach(["vm-one", "vm-none"]) == {"vm-one"}
    await node.stop("vm-one")
    assert not await node.is_running("vm-one")


async def test_a_program_run_reports_the_nodes_call_and_the_agents_part_of_it(node: NodeClient) -> None:
    for result in (
        await node.exec("vm-one", ExecRequest("echo hi"), 4096),
        await node.run_script("vm-one", ScriptRequest(language=ScriptLanguage.JS, code="1"), False, 4096),
    ):
        assert result.timing is not None and result.timing.guest_ms is not None
        assert 0 <= result.timing.guest_ms <= result.timing.node_ms


async def test_files_round_trip(node: NodeClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"tar"
        yield b"gz"

    if isinstance(node, FakeNodeClient):
        await node.upload("vm-one", "/workspace/x", body(), 1 << 20)
        data = b"".join([c async for c in await node.download("vm-one", "/workspace/x")])
        assert data == b"targz"
        return
    with pytest.raises(SheeshError):  # not a tar.gz: refused, nothing written
        await node.upload("vm-one", "/workspace", body(), 1 << 20)
    with pytest.raises(SheeshError):
        await node.download("vm-one", "/workspace/missing")


async def test_remote_errors_come_back_as_the_same_classes(tmp_path: Path) -> None:
    agent = NodeAgent(tmp_path / "vms", FakeDriver())
    node = remote(agent)
    try:
        with pytest.raises(UnavailableError, match="not running"):
            await node.exec("vm-none", ExecRequest("true"), 10)
        with pytest.raises(NotFoundError):
            await node.start_vpn(_vpn_spec("vm-none", "10.200.0.0/24"))
        await node.create(_spec(tmp_path, "vm-two"))
        with pytest.raises(InvalidInputError, match="not a valid ExecRequest"):
            await node.invoke("exec", vm_id="vm-two", req={"cmd": 5}, output_limit=10)
        with pytest.raises(ForbiddenError, match="node token"):
            await remote(agent, "wrong").status()
        with pytest.raises(SheeshError, match="takes the arguments"):
            await node.invoke("is_running")
    finally:
        await node.destroy("vm-two")
        await node.close()
        await agent.close()


async def test_an_unreachable_node_is_named_and_idempotent_calls_are_retried() -> None:
    tries: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tries.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    node = RemoteNode("n2", "http://10.9.9.9:1337", TOKEN, retries=2, transport=httpx.MockTransport(refuse))
    with pytest.raises(UnavailableError, match="node n2 is unreachable"):
        await node.status()
    assert tries == ["/node/v1/status"] * 3
    tries.clear()
    with pytest.raises(UnavailableError):
        await node.pause("vm-1")
    assert len(tries) == 1 + 2, "a refused connection never reached the node: safe to retry"
    await node.close()


def test_every_operation_of_the_protocol_crosses_http() -> None:
    streamed = {"upload", "download", "exec_stream", "close", "name"}
    protocol = {n for n in dir(NodeClient) if not n.startswith("_")} - streamed
    assert protocol == set(CONTRACT_OPS)
    assert all(hasattr(RemoteNode, n) for n in protocol | {"upload", "download", "exec_stream"})


async def test_heartbeats_go_to_the_replica_that_answers() -> None:
    seen: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "cp-a":
            raise httpx.ConnectError("refused", request=request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        return httpx.Response(200, json={"state": "READY"})

    node = FakeNodeClient()
    beat = Heartbeat(
        control_url="http://cp-a:3000, http://cp-b:3000",
        name="fake",
        token=TOKEN,
        address="10.0.0.2",
        port=1337,
        tls=False,
        public_host=None,
        status=node.status,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(route)) as http:
        await beat.beat(http)
        await beat.beat(http)
    assert seen == ["cp-a", "cp-b", "cp-b"], "the replica that answered keeps the reports"
    assert beat.beats == 2


async def test_spares_are_kept_only_of_a_snapshot_the_node_holds(node: NodeClient, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        await node.keep_spares(dataclasses.replace(_spec(tmp_path, "vm-like"), snapshot_id="snap-none"))
    await node.snapshot("vm-one", "snap-1")
    await node.keep_spares(dataclasses.replace(_spec(tmp_path, "vm-like"), snapshot_id="snap-1"))
    await node.delete_snapshot("snap-1")


async def test_usage_of_a_running_vm_and_of_none(node: NodeClient) -> None:
    first = await node.usage("vm-one")
    assert first is not None and first.mem_mb > 0 and first.cpu_s >= 0 and first.at_s > 0
    second = await node.usage("vm-one")
    assert second is not None and second.cpu_s >= first.cpu_s and second.at_s >= first.at_s
    assert await node.usage("vm-missing") is None
