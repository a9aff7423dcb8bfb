"""Streaming exec (``/v1/vms/:id/exec/stream``) through the whole stack in-process: API -> control -> node agent
-> the real guest agent on the fake VMM (a host process; PTYs are real pseudo-terminals of this host)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from sheesh.config import Settings
from sheesh.vmm.fake import FakeDriver
from tests.vmmstack import GOOD, KEY

Stack = tuple[TestClient, FakeDriver]


class Streams:
    """Opens stream WebSockets on one client and closes them all at the end (an open one keeps the app)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self._open: list[Any] = []

    def open(self, vm_id: str, first: dict[str, Any], headers: dict[str, str] = KEY) -> WebSocketTestSession:
        ctx = self.client.websocket_connect(f"/v1/vms/{vm_id}/exec/stream", headers=headers)
        session = ctx.__enter__()
        self._open.append(ctx)
        session.send_text(json.dumps(first))
        return session

    def close(self) -> None:
        for ctx in self._open:
            with contextlib.suppress(Exception):
                ctx.__exit__(None, None, None)


@pytest.fixture
def streams(vmm_stack: Stack) -> Iterator[Streams]:
    opened = Streams(vmm_stack[0])
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def vm(vmm_stack: Stack, streams: Streams) -> tuple[Streams, str]:
    c, _ = vmm_stack
    r = c.post("/v1/vms", json=GOOD, headers=KEY)
    assert r.status_code == 201, r.text
    return streams, r.json()["id"]


def _collect(ws: WebSocketTestSession) -> tuple[bytes, bytes, dict[str, Any]]:
    """Everything up to the exit message: stdout, stderr and the exit."""
    out, err = bytearray(), bytearray()
    while True:
        message = ws.receive()
        if message.get("bytes") is not None:
            data = message["bytes"]
            (out if data[0] == 1 else err).extend(data[1:])
            continue
        parsed = json.loads(message["text"])
        if parsed["type"] == "exit":
            return bytes(out), bytes(err), parsed
        assert parsed["type"] == "started", parsed


def _started(ws: WebSocketTestSession) -> dict[str, Any]:
    first = json.loads(ws.receive_text())
    assert first["type"] == "started" and first["pid"] > 0, first
    return first


def test_output_comes_while_the_command_runs(vm: tuple[Streams, str]) -> None:
    streams, vm_id = vm
    ws = streams.open(vm_id, {"cmd": "echo first; sleep 1.5; echo second >&2; exit 3"})
    start = time.monotonic()
    _started(ws)
    chunk = ws.receive_bytes()
    assert chunk == b"\x01first\n"
    assert time.monotonic() - start < 1.4, "the first line came only when the command ended"
    out, err, end = _collect(ws)
    assert (out, err) == (b"", b"second\n")
    assert end == {"type": "exit", "exitCode": 3, "timedOut": False, "truncated": False}
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == 1000
    logs = streams.client.get(f"/v1/vms/{vm_id}/exec-logs", headers=KEY).json()
    assert logs[0]["command"].startswith("echo first") and logs[0]["exitCode"] == 3


def test_stdin_round_trip_through_cat_and_bytes_stay_bytes(vm: tuple[Streams, str]) -> None:
    streams, vm_id = vm
    ws = streams.open(vm_id, {"cmd": "cat; printf '\\377\\376\\000end'"})
    _started(ws)
    ws.send_bytes(b"hello \xff\n")
    assert ws.receive_bytes() == b"\x01hello \xff\n"
    ws.send_text(json.dumps({"type": "stdin", "data": "text too\n"}))
    assert ws.receive_bytes() == b"\x01text too\n"
    ws.send_text(json.dumps({"type": "eof"}))
    out, _, end = _collect(ws)
    assert out == b"\xff\xfe\x00end" and end["exitCode"] == 0


def test_a_pty_is_a_terminal_and_follows_resizes(vm: tuple[Streams, str]) -> None:
    streams, vm_id = vm
    ws = streams.open(vm_id, {"cmd": "tty; stty size; read line; stty size", "pty": True, "rows": 30, "cols": 100})
    _started(ws)
    seen = bytearray()
    while b"30 100" not in seen:
        seen.extend(ws.receive_bytes()[1:])
    assert b"/dev/pts/" in seen
    ws.send_text(json.dumps({"type": "resize", "rows": 50, "cols": 132}))
    ws.send_bytes(b"go\r")
    out, err, end = _collect(ws)
    assert b"50 132" in out and err == b"" and end["exitCode"] == 0


def test_kill_ends_a_sleep_and_timeouts_are_reported(vm: tuple[Streams, str]) -> None:
    streams, vm_id = vm
    ws = streams.open(vm_id, {"cmd": "sleep 60"})
    _started(ws)
    start = time.monotonic()
    ws.send_text(json.dumps({"type": "kill"}))
    _, _, end = _collect(ws)
    assert end["exitCode"] == 137 and time.monotonic() - start < 10
    ws = streams.open(vm_id, {"cmd": "sleep 60", "timeoutMs": 500})
    _, _, end = _collect(ws)
    assert end["exitCode"] == 124 and end["timedOut"] is True


def test_refused_messages_are_answered_and_the_stream_goes_on(vm: tuple[Streams, str]) -> None:
    streams, vm_id = vm
    ws = streams.open(vm_id, {"cmd": "cat"})
    _started(ws)
    for bad, status in (("{nope", 400), ('{"type": "dance"}', 400), ('{"type": "signal", "signal": "FOO"}', 400)):
        ws.send_text(bad)
        answer = json.loads(ws.receive_text())
        assert answer["type"] == "error" and answer["status"] == status, answer
    ws.send_text(json.dumps({"type": "resize", "rows": 10, "cols": 10}))  # no terminal
    assert "terminal" in json.loads(ws.receive_text())["message"]
    ws.send_bytes(b"still here\n")
    assert ws.receive_bytes() == b"\x01still here\n"
    ws.send_text(json.dumps({"type": "eof"}))
    assert _collect(ws)[2]["exitCode"] == 0


@pytest.mark.parametrize(
    ("vm_path", "first", "headers", "status"),
    [
        ("{vm}", {"cmd": "true"}, {}, 401),
        ("{vm}", {"cmd": "true"}, {"X-API-Key": "wrong"}, 401),
        ("vm-nope", {"cmd": "true"}, KEY, 404),
        ("{vm}", {"cmd": ""}, KEY, 400),
        ("{vm}", {"cmd": "true", "timeoutMs": 10**9}, KEY, 400),
        ("{vm}", {"cmd": "true", "cwd": "/etc"}, KEY, 400),
        ("{vm}", {"cmd": "true", "rows": 0, "pty": True}, KEY, 400),
    ],
)
def test_streams_that_cannot_start_say_why(
    vm: tuple[Streams, str], vm_path: str, first: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    streams, vm_id = vm
    ws = streams.open(vm_path.format(vm=vm_id), first, headers)
    answer = json.loads(ws.receive_text())
    assert answer["type"] == "error" and answer["status"] == status and answer["message"], answer
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == 4000 + status


def test_output_is_capped_like_exec(vm: tuple[Streams, str], settings: Settings) -> None:
    streams, vm_id = vm
    settings.exec_output_limit_bytes = 1000
    ws = streams.open(vm_id, {"cmd": "head -c 5000 /dev/zero; echo done >&2"})
    out, err, end = _collect(ws)
    assert len(out) == 1000 and err == b"done\n" and end["truncated"] is True and end["exitCode"] == 0
