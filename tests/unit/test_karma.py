"""The karma.run surface: X-Karma-Codec (json, msgpack) decides how bodies are read and answers written,
Expect must be empty."""

from __future__ import annotations

import json

import msgpack
import pytest
from fastapi.testclient import TestClient

from tests.fakes import ADMIN, PASSWORD, FakeStack

MSGPACK = {"X-Karma-Codec": "msgpack"}


@pytest.fixture
def c(stack: FakeStack) -> TestClient:
    assert (
        stack.client.post("/v1/users", json={"username": "alice", "password": PASSWORD}, headers=ADMIN).status_code
        == 201
    )
    return stack.client


def _login(c: TestClient, codec: str = "json") -> str:
    creds = {"username": "alice", "password": PASSWORD}
    if codec == "json":  # as the seed's example: a JSON body without a Content-Type header
        r = c.post("/auth", content=json.dumps(creds).encode(), headers={"X-Karma-Codec": "json", "Expect": ""})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        return str(r.json())
    r = c.post("/auth", content=msgpack.packb(creds), headers=MSGPACK)
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    return str(msgpack.unpackb(r.content))


def test_the_codec_decides_how_bodies_are_read_and_written(c: TestClient) -> None:
    for codec in ("json", "msgpack"):
        sig = _login(c, codec)
        assert c.get("/v1/users/me", headers={"X-Karma-Signature": sig}).json()["username"] == "alice"
    renewed = c.get("/auth", headers={"X-Karma-Signature": _login(c), **MSGPACK})
    assert renewed.status_code == 200 and isinstance(msgpack.unpackb(renewed.content), str)


def test_codec_errors_and_expect(c: TestClient) -> None:
    r = c.post("/auth", content=b'{"username": "alice", "password": "x"}', headers={"X-Karma-Codec": "xml"})
    assert r.status_code == 400 and "json, msgpack" in r.json()["message"]
    r = c.post("/auth", content=b"{not json", headers={"X-Karma-Codec": "json"})
    assert r.status_code == 400 and r.json()["message"] == "request body is not valid json"
    r = c.post("/auth", content=b"\xc1", headers=MSGPACK)
    assert r.status_code == 400 and msgpack.unpackb(r.content) == {"message": "request body is not valid msgpack"}
    r = c.post("/auth", content=msgpack.packb({"username": "alice", "password": "wrong password"}), headers=MSGPACK)
    assert r.status_code == 403 and "message" in msgpack.unpackb(r.content), "errors in the request's codec"
    r = c.post("/auth", content=msgpack.packb(["alice"]), headers=MSGPACK)
    assert r.status_code == 400
    r = c.post("/auth", content=b'{"username": "alice"}', headers={"Expect": "100-continue"})
    assert r.status_code == 417 and "Expect" in r.json()["message"]
