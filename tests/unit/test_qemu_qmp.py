"""Connecting to a QEMU's QMP socket in QEMU's awkward moments: bound but not listening yet (the moment after
QEMU creates the socket file), or an event sent ahead of the greeting (QEMU emitting one while it takes the
client): the connection is tried again until QEMU listens and greets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from qemu.qmp import ConnectError

from sheesh.vmm.qemu.driver import _connect_qmp

EVENT = {"timestamp": {"seconds": 1, "microseconds": 0}, "event": "VNC_CONNECTED", "data": {}}
GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}


def _late_qmp_server(path: Path, listen_after_s: float, stray_events: int = 0) -> socket.socket:
    """A QMP server that listens after ``listen_after_s`` and serves clients one after another; the first
    ``stray_events`` of them get an event, alternately ahead of the greeting and of the first reply."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))  # the file exists from here on; connections are refused until listen()

    def serve() -> None:
        time.sleep(listen_after_s)
        with contextlib.suppress(OSError):  # the test may have closed the socket by then
            srv.listen(1)
            for n in itertools.count():
                conn, _ = srv.accept()
                with conn:
                    stray = json.dumps(EVENT).encode() + b"\r\n" if n < stray_events else b""
                    conn.sendall((b"" if n % 2 else stray) + json.dumps(GREETING).encode() + b"\r\n")
                    _answer(conn, stray if n % 2 else b"")

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _answer(conn: socket.socket, before_first: bytes) -> None:
    decoder, pending = json.JSONDecoder(), ""
    while data := conn.recv(4096):  # commands come as JSON objects, not necessarily one per line
        pending += data.decode()
        while pending.strip():
            msg, end = decoder.raw_decode(pending.lstrip())
            pending = pending.lstrip()[end:]
            reply = {"return": {}} | ({"id": msg["id"]} if "id" in msg else {})
            conn.sendall(before_first + json.dumps(reply).encode() + b"\r\n")
            before_first = b""


async def test_a_socket_that_listens_late_is_connected(tmp_path: Path) -> None:
    srv = _late_qmp_server(tmp_path / "qmp.sock", 0.3)
    try:
        client = await _connect_qmp("vm-late", tmp_path / "qmp.sock", 5.0)
        assert client.greeting is not None
        await client.disconnect()
    finally:
        srv.close()


async def test_a_socket_that_never_listens_fails_in_time(tmp_path: Path) -> None:
    srv = _late_qmp_server(tmp_path / "qmp.sock", 60)
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises((ConnectError, TimeoutError)):
            await _connect_qmp("vm-never", tmp_path / "qmp.sock", 0.5)
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        srv.close()


async def test_an_event_ahead_of_the_handshake_is_met_with_a_new_connection(tmp_path: Path) -> None:
    srv = _late_qmp_server(tmp_path / "qmp.sock", 0, stray_events=4)
    try:
        client = await _connect_qmp("vm-event", tmp_path / "qmp.sock", 5.0)
        assert client.greeting is not None
        assert await client.execute("query-status") == {}
        await client.disconnect()
    finally:
        srv.close()
