"""A real `sheesh serve` (fake VMM) answers unparsable and oversized requests with JSON, never a reset."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from tests.server import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    image_dir = Settings().resolved_image_dir()
    ImageBuilder(image_dir).build()
    with running_server(tmp_path_factory.mktemp("limits") / "data", image_dir, SHEESH_VMM="fake") as srv:
        yield srv


def _raw(server: ServerProcess, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)  # the server may answer early; the answer must still be readable
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /v1/vms?q=" + b"b" * 600_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Fill-%d: %s\r\n" % (i, b"c" * 100) for i in range(200)), 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"d" * 20_000 + b"\r\n\r\n", 431),
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
    ],
)
def test_unparsable_requests_get_json_errors(server: ServerProcess, payload: bytes, status: int) -> None:
    got, headers, body = _raw(server, payload)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"]


def test_oversized_json_body_is_413_not_a_reset(server: ServerProcess) -> None:
    env = {f"K{i}": "x" * 100_000 for i in range(256)}
    r = httpx.post(
        server.url + "/v1/vms/vm-nope/exec", json={"cmd": "true", "env": env}, headers={"X-API-Key": server.api_key}
    )
    assert r.status_code == 413 and "larger than" in r.json()["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"cmd": "true", "env": {"A": "'
        for _ in range(40):
            yield b"y" * 100_000
        yield b'"}}'

    r = httpx.post(
        server.url + "/v1/vms/vm-nope/exec",
        content=chunked(),
        headers={"X-API-Key": server.api_key, "content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["message"]
    assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_heads_under_the_limit_and_pipelined_requests_are_served(server: ServerProcess) -> None:
    big = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nX-Big: " + b"e" * 12_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(big[:5000])  # a head that arrives in pieces
        s.sendall(big[5000:])
        pipelined = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        s.sendall(pipelined + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) [A-Za-z ]+\r\n", data)]
    assert statuses == [200, 200, 200, 404]


def test_ordinary_requests_still_work_after(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.get("/v1/vms").status_code == 200


def test_each_answered_request_is_in_the_access_log(server: ServerProcess) -> None:
    """The access log (written after the answer now: ``http.AccessLogAfter``) still has a line per request."""
    with server.client() as c:
        assert c.get("/v1/vms", params={"marker": "access-1"}).status_code == 200
        assert c.get("/v1/vms/vm-nope", params={"marker": "access-2"}).status_code == 404
    lines: list[str] = []
    deadline = time.monotonic() + 5
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = [line for line in server.log.read_text().splitlines() if "marker=access-" in line]
    assert len(lines) == 2, lines
    assert lines[0].endswith('"GET /v1/vms?marker=access-1 HTTP/1.1" 200 OK'), lines
    assert lines[1].endswith('"GET /v1/vms/vm-nope?marker=access-2 HTTP/1.1" 404 Not Found'), lines
