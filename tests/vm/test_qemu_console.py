"""The node's /serial WebSocket on a real VM: a shell as uid 1000, one-time tokens (Kyun protocol)."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.server import ServerProcess

pytestmark = pytest.mark.vm


async def _read_until(ws: websockets.ClientConnection, marker: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not seen in {seen[-500:]!r}"
        msg = await asyncio.wait_for(ws.recv(), left)
        seen += msg if isinstance(msg, bytes) else msg.encode()
    return seen


def test_serial_console_shell(shared_server: ServerProcess) -> None:
    with shared_server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()["id"]
        info = c.get(f"/v1/vms/{vm}").json()
        assert info["nodePort"] == shared_server.node_port
        grant = c.get(f"/v1/vms/{vm}/agentToken").json()
        url = f"ws://127.0.0.1:{shared_server.node_port}/serial?token={grant['token']}"

        async def session() -> bytes:
            async with websockets.connect(url) as ws:
                await ws.send("\n")
                await ws.send("echo sum=$((6*7)) uid=$(id -u) cwd=$PWD\n")
                return await _read_until(ws, b"sum=42 uid=1000 cwd=/workspace")

        assert b"sum=42 uid=1000 cwd=/workspace" in asyncio.run(session())

        async def reuse() -> tuple[int, str]:
            async with websockets.connect(url) as ws:
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    return exc.rcvd.code, exc.rcvd.reason
            return 0, ""

        assert asyncio.run(reuse()) == (1008, "token already used")
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
