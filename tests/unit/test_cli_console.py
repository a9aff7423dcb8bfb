"""``sheesh console``: the terminal bridge against the node's real /serial endpoint (served by uvicorn; the
VM's console is a Unix socket that upper-cases what it receives), with pipes standing in for the terminal."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheesh.auth.sessions import SessionSigner
from sheesh.cli.console import ESCAPE, ConsoleError, attach
from sheesh.node.ws import create_node_app
from tests.fakes import node_with_console, serving


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[str, SessionSigner, bytearray]]:
    """A node on a loopback port whose vm-1 has an upper-casing serial console; yields (ws base, signer,
    the bytes the console received)."""
    signer = SessionSigner(b"k" * 32)
    with node_with_console(tmp_path) as (agent, received), serving(create_node_app(agent, signer)) as port:
        yield f"ws://127.0.0.1:{port}", signer, received


def _read_until(fd: int, marker: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while marker not in seen:
        assert time.monotonic() < deadline, f"{marker!r} not in {seen!r}"
        try:
            seen += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.02)
    return seen


def test_console_bridges_the_terminal_and_detaches_on_ctrl_bracket(
    node: tuple[str, SessionSigner, bytearray],
) -> None:
    base, signer, received = node
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    url = f"{base}/serial?token={signer.issue('vm-1', 'agent', 60)}"
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(attach(url, in_r, out_w))))
    thread.start()
    try:
        assert b"login banner" in _read_until(out_r, b"login banner\r\n")
        os.write(in_w, b"echo hi\n\x1b[A")
        assert _read_until(out_r, b"ECHO HI\n\x1b[A").endswith(b"ECHO HI\n\x1b[A"), "bytes pass unchanged"
        os.write(in_w, b"last" + ESCAPE + b"never sent")
        thread.join(10)
        assert result == ["detached"]
        deadline = time.monotonic() + 5
        while not received.endswith(b"last"):  # what came before Ctrl-] was sent, nothing after it
            assert time.monotonic() < deadline and b"never" not in received, bytes(received)
            time.sleep(0.02)
        assert bytes(received) == b"echo hi\n\x1b[Alast"
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)


def test_console_reports_refused_tokens(node: tuple[str, SessionSigner, bytearray]) -> None:
    base, signer, _ = node
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        for token, reason in [(signer.issue("vm-1", "agent", -1), "session expired"), ("x", "malformed session token")]:
            with pytest.raises(ConsoleError, match=reason):
                asyncio.run(attach(f"{base}/serial?token={token}", in_r, out_w))
        with pytest.raises(ConsoleError, match="cannot connect"):
            asyncio.run(attach("ws://127.0.0.1:9/serial?token=x", in_r, out_w))
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
