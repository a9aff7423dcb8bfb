"""The node's /serial endpoint: one-time tokens and byte-exact bridging (console faked by a Unix socket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sheesh.auth.sessions import SessionSigner
from sheesh.node.ws import create_node_app
from tests.fakes import node_with_console


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[TestClient, SessionSigner]]:
    """A node whose vm-1 has a 'serial console' that upper-cases what it receives."""
    signer = SessionSigner(b"k" * 32)
    with node_with_console(tmp_path) as (node, _), TestClient(create_node_app(node, signer)) as c:
        yield c, signer


def test_serial_bridges_bytes_both_ways(console: tuple[TestClient, SessionSigner]) -> None:
    c, signer = console
    with c.websocket_connect(f"/serial?token={signer.issue('vm-1', 'agent', 60)}") as ws:
        assert ws.receive_bytes() == b"login banner\r\n"
        ws.send_text("echo hi\n")
        assert ws.receive_bytes() == b"ECHO HI\n"
        ws.send_bytes(b"\x1b[A\x00raw")
        assert ws.receive_bytes() == b"\x1b[A\x00RAW"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: None, "token query parameter required"),
        (lambda s: s.issue("vm-1", "agent", 60) + "x", "invalid session signature"),
        (lambda s: s.issue("vm-1", "agent", -1), "session expired"),
        (lambda s: s.issue("vm-1", "signature", 60), "wrong kind"),
        (lambda s: s.issue("vm-2", "agent", 60), "not running"),
    ],
)
def test_bad_tokens_are_closed_with_a_reason(
    console: tuple[TestClient, SessionSigner], make: object, reason: str
) -> None:
    c, signer = console
    token = make(signer)  # type: ignore[operator]
    url = "/serial" + (f"?token={token}" if token else "")
    with c.websocket_connect(url) as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_bytes()
    assert closed.value.code == 1008 and reason in closed.value.reason


def test_token_is_single_use(console: tuple[TestClient, SessionSigner]) -> None:
    c, signer = console
    token = signer.issue("vm-1", "agent", 60)
    with c.websocket_connect(f"/serial?token={token}") as ws:
        assert ws.receive_bytes() == b"login banner\r\n"
    with c.websocket_connect(f"/serial?token={token}") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_bytes()
    assert closed.value.reason == "token already used"
