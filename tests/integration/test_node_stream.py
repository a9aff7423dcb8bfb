"""The node contract's ``exec_stream``, checked against every implementation: the fake node, the node agent (real
guest agent on the fake VMM) and that node agent behind its contract routes on a real uvicorn, reached by
``RemoteNode`` over a WebSocket as a control plane on another host does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from sheesh.control.node_client import FakeNodeClient
from sheesh.control.remote_node import RemoteNode
from sheesh.errors import InvalidInputError, SheeshError
from sheesh.execstream import ExecStream, StreamExit, StreamOutput, StreamRequest
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeClient, NodeVmSpec
from sheesh.node.server import contract_routes
from sheesh.vmm.fake import FakeDriver
from tests.fakes import serving

TOKEN = "node-secret-for-stream-tests"


def _spec(tmp: Path) -> NodeVmSpec:
    (tmp / "rootfs").write_text("r")
    return NodeVmSpec(
        vm_id="vm-s", cpu=1, mem_mb=256, kernel=tmp / "k", initrd=tmp / "i", rootfs=tmp / "rootfs", disk_size_mb=64
    )


@pytest.fixture(params=["fake", "agent", "remote"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NodeClient]:
    impl: NodeClient
    if request.param == "fake":
        impl = FakeNodeClient()
    elif request.param == "agent":
        impl = NodeAgent(tmp_path / "vms", FakeDriver())
    if request.param != "remote":
        await impl.create(_spec(tmp_path))
        try:
            yield impl
        finally:
            await impl.destroy("vm-s")
            await impl.close()
        return
    agent = NodeAgent(tmp_path / "vms", FakeDriver())  # used only from the server's thread and loop
    with serving(Starlette(routes=contract_routes(agent, TOKEN))) as port:
        impl = RemoteNode("n2", f"http://127.0.0.1:{port}", TOKEN)
        await impl.create(_spec(tmp_path))
        try:
            yield impl
        finally:
            await impl.destroy("vm-s")
            await impl.close()


async def _drain(stream: ExecStream) -> tuple[bytes, StreamExit]:
    out = bytearray()
    async for event in stream.events():
        if isinstance(event, StreamOutput):
            out.extend(event.data)
        else:
            return bytes(out), event
    raise AssertionError("no exit")


async def _until(stream: ExecStream, marker: bytes) -> bytes:
    seen = bytearray()
    events = stream.events()
    while marker not in seen:
        event = await asyncio.wait_for(anext(events), 10)
        assert isinstance(event, StreamOutput), event
        seen.extend(event.data)
    return bytes(seen)


async def test_stdin_comes_back_and_the_end_of_stdin_ends_cat(node: NodeClient) -> None:
    stream = await node.exec_stream("vm-s", StreamRequest(cmd="cat"), 4096)
    try:
        assert stream.pid > 0
        await stream.write(b"ping\n")
        assert b"ping\n" in await _until(stream, b"ping\n")
        with pytest.raises(InvalidInputError, match="terminal"):
            await stream.resize(40, 100)
        await stream.close_stdin()
        _, end = await asyncio.wait_for(_drain(stream), 10)
        assert end.exit_code == 0 and not end.timed_out
    finally:
        await stream.close()


async def test_kill_ends_the_command(node: NodeClient) -> None:
    stream = await node.exec_stream("vm-s", StreamRequest(cmd="sleep 30"), None)
    try:
        await stream.signal("KILL")
        _, end = await asyncio.wait_for(_drain(stream), 10)
        assert end.exit_code == 137
    finally:
        await stream.close()


async def test_a_terminal_can_be_resized(node: NodeClient) -> None:
    stream = await node.exec_stream("vm-s", StreamRequest(cmd="cat", pty=True, rows=20, cols=70), None)
    try:
        await stream.resize(30, 90)
        await stream.write(b"x\n")
        await _until(stream, b"x")
    finally:
        await stream.close()


async def test_no_stream_on_an_unknown_vm(node: NodeClient) -> None:
    with pytest.raises(SheeshError):
        await node.exec_stream("vm-none", StreamRequest(cmd="true"), None)
