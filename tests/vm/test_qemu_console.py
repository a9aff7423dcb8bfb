"""The node's /serial WebSocket on a real VM: a shell as uid 1000, one-time tokens (Kyun protocol)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

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


def test_cli_console_attaches_and_detaches(shared_server: ServerProcess) -> None:
    """``sheesh console`` (stdin/stdout pipes: no raw mode) reaches the VM's shell and Ctrl-] detaches."""
    with shared_server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()["id"]
        cli = Path(sys.executable).parent / "sheesh"
        argv = [str(cli), "console", vm, "--api", shared_server.url, "--api-key", shared_server.api_key]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            os.set_blocking(proc.stdout.fileno(), False)
            proc.stdin.write(b"\necho cli=$((6*7))\n")
            proc.stdin.flush()
            seen, deadline = b"", time.monotonic() + 60
            while b"cli=42" not in seen:
                assert time.monotonic() < deadline and proc.poll() is None, seen[-500:]
                seen += proc.stdout.read() or b""
                time.sleep(0.1)
            proc.stdin.write(b"\x1d")
            proc.stdin.flush()
            assert proc.wait(20) == 0
            os.set_blocking(proc.stdout.fileno(), True)
            assert b"console detached" in seen + proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        bad = subprocess.run([*argv[:2], "vm-missing", *argv[3:]], capture_output=True, text=True, check=False)
        assert bad.returncode == 1 and "agentToken: HTTP 404: VM vm-missing not found" in bad.stderr, bad.stderr
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
