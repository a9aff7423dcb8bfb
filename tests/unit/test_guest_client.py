"""The node's guest-agent client notices an agent that died or was restarted while a request waited."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sheesh.errors import GuestTimeoutError, UnavailableError
from sheesh.guest import protocol
from sheesh.guest.protocol import Op
from sheesh.node import guest_client
from sheesh.node.guest_client import GuestClient


async def _agent(path: Path, agent_ids: list[str], answer_exec: bool = False) -> asyncio.AbstractServer:
    """A scripted agent: pings are answered in the name of ``agent_ids[0]`` first, then the next names (one
    per ping: a restart); an exec is never answered (unless ``answer_exec``); an empty list: silence."""
    names = list(agent_ids)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder()
        while data := await reader.read(65536):
            for req in decoder.feed(data):
                if req["op"] == Op.PING and names:
                    name = names.pop(0) if len(names) > 1 else names[0]
                    writer.write(protocol.encode({"id": req["id"], "ok": True, "agent": name}))
                elif req["op"] == Op.EXEC and answer_exec:
                    writer.write(protocol.encode({"id": req["id"], "ok": True, "agent": names[0], "exit_code": 0}))
            await writer.drain()

    return await asyncio.start_unix_server(serve, str(path))


async def test_restarted_agent_fails_the_waiting_call_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_client, "PROBE_S", 0.2)
    sock = tmp_path / "agent.sock"
    server = await _agent(sock, ["agent-a", "agent-a", "agent-b"])
    client = GuestClient(sock)
    try:
        await client.call(Op.PING, 2)
        assert client.agent_id == "agent-a"
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="restarted"):
            await client.call(Op.EXEC, 3600, cmd="sleep 1000")
        assert time.monotonic() - start < 2
    finally:
        await client.close()
        server.close()


async def test_silent_agent_fails_the_waiting_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection stays up (QEMU holds it) but no agent reads it: pings go unanswered."""
    monkeypatch.setattr(guest_client, "PROBE_S", 0.2)
    sock = tmp_path / "agent.sock"
    server = await _agent(sock, [])
    client = GuestClient(sock)
    try:
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="stopped answering"):
            await client.call(Op.EXEC, 3600, cmd="sleep 1000")
        assert time.monotonic() - start < 3
    finally:
        await client.close()
        server.close()


async def test_a_live_agent_keeps_long_calls_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_client, "PROBE_S", 0.1)
    sock = tmp_path / "agent.sock"
    server = await _agent(sock, ["agent-a"])
    client = GuestClient(sock)
    try:
        with pytest.raises(GuestTimeoutError):
            await client.call(Op.EXEC, 1.0, cmd="sleep 1000")  # pings answered: waits out its own timeout
    finally:
        await client.close()
        server.close()


async def _slow_reader(path: Path, start_reading: asyncio.Event) -> asyncio.AbstractServer:
    """An agent that reads nothing until ``start_reading`` is set, then answers every request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        decoder = protocol.FrameDecoder()
        while data := await reader.read(1 << 20):
            for req in decoder.feed(data):
                writer.write(protocol.encode({"id": req["id"], "ok": True, "agent": "agent-a", "size": len(data)}))
            await writer.drain()

    return await asyncio.start_unix_server(serve, str(path))


async def test_a_call_waits_while_the_socket_is_full_then_goes_on(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    start_reading = asyncio.Event()
    server = await _slow_reader(sock, start_reading)
    client = GuestClient(sock)
    try:
        big = "x" * (8 << 20)  # far more than the socket and the transport buffer hold
        call = asyncio.create_task(client.call(Op.UPLOAD_CHUNK, 10, upload="u", data=big))
        await asyncio.sleep(0.3)
        assert not call.done()  # waiting for the agent to read
        start_reading.set()
        reply = await call
        assert reply["ok"] is True
        assert (await client.call(Op.PING, 2))["agent"] == "agent-a"  # the connection goes on serving
    finally:
        await client.close()
        server.close()


async def test_a_call_that_cannot_write_in_time_times_out(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    server = await _slow_reader(sock, asyncio.Event())  # never reads
    client = GuestClient(sock)
    try:
        start = time.monotonic()
        with pytest.raises(GuestTimeoutError):
            await client.call(Op.UPLOAD_CHUNK, 0.5, upload="u", data="x" * (8 << 20))
        assert 0.4 < time.monotonic() - start < 3
    finally:
        await client.close()
        server.close()


async def test_a_lost_connection_fails_the_waiting_call_and_the_next_call_reconnects(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the exec's frame: the agent goes away without answering
        writer.close()

    server = await asyncio.start_unix_server(hang_up, str(sock))
    client = GuestClient(sock)
    try:
        with pytest.raises(UnavailableError, match="lost"):
            await asyncio.wait_for(client.call(Op.EXEC, 3600, cmd="sleep 1000"), 5)
        assert not client.connected
        server.close()
        server = await _agent(sock, ["agent-b"])
        assert (await client.call(Op.PING, 2))["agent"] == "agent-b"
    finally:
        await client.close()
        server.close()
