"""The karma.run surface: X-Karma-Codec (json, msgpack) decides how bodies are read and answers written,
Expect must be empty."""

from __future__ import annotations

import base64
import gzip
import json

import msgpack
import pytest
from fastapi.testclient import TestClient

from tests.fakes import ADMIN, PASSWORD, FakeStack, user_headers

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


def _kvm(c: TestClient, sig: str, expr: object, codec: str = "json") -> tuple[int, object]:
    headers = {"X-Karma-Signature": sig, "X-Karma-Codec": codec}
    if codec == "msgpack":
        r = c.post("/", content=msgpack.packb(expr), headers=headers)
        return r.status_code, msgpack.unpackb(r.content)
    r = c.post("/", content=json.dumps(expr).encode(), headers=headers)
    return r.status_code, r.json()


def test_the_kvm_endpoint_evaluates_expressions_over_own_records(c: TestClient, stack: FakeStack) -> None:
    alice = _login(c)
    admin = c.post("/auth", json={"username": "admin", "password": "x"}).status_code  # wrong password: 403
    assert admin == 403
    key = {"X-Karma-Signature": alice}
    mine = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=key).json()["id"]
    theirs = c.post("/v1/vms", json={"cpu": 2, "memMb": 512, "allowIps": []}, headers=ADMIN).json()["id"]

    status, tags = _kvm(c, alice, {"all": {"tag": "_tag"}})
    assert status == 200 and {"tag": "vms", "model": "vms"} in tags  # the seed's example
    status, typed = _kvm(c, alice, {"all": {"tag": {"string": "_tag"}}}, "msgpack")
    assert status == 200 and typed == tags, "karma.run's typed literal form, over msgpack"
    status, vms = _kvm(c, alice, {"all": {"tag": "vms"}})
    assert [v["id"] for v in vms] == [mine], "a user sees only their own records"
    status, _ = _kvm(c, "", {"length": {"all": {"tag": "vms"}}})
    assert status == 401
    admin_key = {"X-API-Key": "test-key"}
    r = c.post("/", content=json.dumps({"length": {"all": {"tag": "vms"}}}).encode(), headers=admin_key)
    assert r.json() == 2, "admins see all"
    big = {
        "mapList": [
            {
                "filter": [
                    {"all": {"tag": "vms"}},
                    {"function": [["v"], {"gt": [{"field": ["mem_mb", {"scope": "v"}]}, {"int": 300}]}]},
                ]
            },
            {"function": [["v"], {"field": ["id", {"scope": "v"}]}]},
        ]
    }
    r = c.post("/", content=json.dumps(big).encode(), headers=admin_key)
    assert r.json() == [theirs]
    status, first = _kvm(c, alice, {"metarialize": {"first": {"all": {"tag": "vms"}}}})
    assert status == 200 and first["id"] == mine and first["model"] == "vms" and first["created"]
    status, got = _kvm(c, alice, {"field": ["state", {"get": {"ref": [{"tag": "vms"}, {"string": mine}]}}]})
    assert (status, got) == (200, "RUNNING")
    status, branch = _kvm(c, alice, {"if": {"condition": {"and": [True, {"not": False}]}, "then": "yes", "else": "no"}})
    assert (status, branch) == (200, "yes")
    status, users = _kvm(c, alice, {"all": {"tag": "_user"}})
    assert [u["username"] for u in users] == ["alice"] and "password_hash" not in str(users)
    status, keys = _kvm(c, alice, {"all": {"tag": "apiKeys"}})
    assert status == 200 and "hash" not in str(keys)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ({"nope": 1}, "at /nope: unknown function 'nope'"),
        ({"all": {"tag": "secrets"}}, "unknown model 'secrets'"),
        ({"filter": [{"list": [1, 2]}, {"function": [["v"], {"int": 1}]}]}, "must return a bool"),
        ({"length": {"int": "x"}}, "at /length/int: expected a int"),
        ({"field": ["nope", {"struct": {"a": 1}}]}, "no field 'nope'"),
        ({"gt": [1, "a"]}, "cannot compare"),
        ({"get": {"ref": ["vms", "vm-none"]}}, "no vms record vm-none"),
        ({"a": 1, "b": 2}, "one function name"),
    ],
)
def test_kvm_errors_name_the_failing_sub_expression(c: TestClient, expr: object, fragment: str) -> None:
    status, body = _kvm(c, _login(c), expr)
    assert status == 400 and fragment in str(body), body


def test_kvm_expressions_are_bounded(c: TestClient) -> None:
    sig = _login(c)
    deep: object = {"int": 1}
    for _ in range(100):
        deep = {"not": deep}
    status, body = _kvm(c, sig, deep)
    assert status == 400 and "deeper than" in str(body)
    nested = "[" * 100_000 + "]" * 100_000
    r = c.post("/", content=nested.encode(), headers={"X-Karma-Signature": sig})
    assert r.status_code == 400


def _admin_sig(c: TestClient, password: str) -> dict[str, str]:
    r = c.post("/auth", json={"username": "admin", "password": password})
    assert r.status_code == 200, r.text
    return {"X-Karma-Signature": r.json()}


def test_export_reset_import_round_trip(stack: FakeStack) -> None:
    c = stack.client
    svc = stack.svc
    alice = user_headers(c, "alice")
    vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=alice).json()["id"]
    assert c.post(f"/v1/vms/{vm}/firewall", json={"src": "10.0.0.0/8"}, headers=alice).status_code == 200
    c.post("/v1/workspace-types", json={"name": "big_vm", "cpu": 2, "memMb": 512}, headers=ADMIN)
    assert c.get("/admin/export", headers=alice).status_code == 403, "admins only"

    exported = c.get("/admin/export", headers=ADMIN)
    assert exported.status_code == 200 and isinstance(exported.json(), str)
    dump = exported.json()
    r = c.post("/admin/import", content=json.dumps(dump).encode(), headers=ADMIN)
    assert r.status_code == 409 and "reset it first" in r.json()["message"]
    assert c.get("/admin/import", headers=ADMIN).status_code == 405

    secret = base64.b64encode(b"a new secret of 24 bytes").decode()
    for bad in ("not base64!", base64.b64encode(b"short").decode(), 7):
        assert c.post("/admin/reset", content=json.dumps(bad).encode(), headers=ADMIN).status_code == 400
    assert c.post("/admin/reset", content=json.dumps(secret).encode(), headers=alice).status_code == 403
    r = c.post("/admin/reset", content=json.dumps(secret).encode(), headers=ADMIN)
    assert r.status_code == 200
    new_sig = {"X-Karma-Signature": r.json()}
    assert c.get("/v1/users/me", headers=new_sig).json()["username"] == "admin"
    assert c.get("/v1/vms", headers=new_sig).json() == [] and vm not in stack.node.running, "VMs destroyed"
    assert c.get("/v1/users/me", headers=alice).status_code == 401, "keys are gone"
    _admin_sig(c, secret)  # the admin's password is the new secret
    assert c.get("/workspaces").json()["workspace_types"] == ["basic_vm"], "defaults again"

    for bad in (b'"not base64!"', json.dumps(base64.b64encode(b"not gzip").decode()).encode(), b"\x1f\x8bjunk"):
        assert c.post("/admin/import", content=bad, headers=new_sig).status_code == 400
    assert c.get("/v1/vms", headers=new_sig).json() == [], "a bad dump writes nothing"
    r = c.post("/admin/import", content=json.dumps(dump).encode(), headers=new_sig)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["users"] == 1 and report["vms"] == 1 and report["api_keys"] >= 1
    assert c.get("/v1/users/me", headers=alice).json()["username"] == "alice", "alice's key works again"
    restored = c.get(f"/v1/vms/{vm}", headers=alice).json()
    assert restored["state"] == "STOPPED" and "restored from a dump" in restored["error"]
    assert c.get(f"/v1/vms/{vm}/firewall", headers=alice).json()["rules"] == [{"src": "10.0.0.0/8", "action": "ACCEPT"}]
    assert sorted(c.get("/workspaces").json()["workspace_types"]) == ["basic_vm", "big_vm"]
    assert svc.store.get_user_by_name("admin") is not None
    raw = gzip.decompress(base64.b64decode(dump))
    assert b"password_hash" in raw and b"key_hash" in raw and json.loads(raw)["version"] == 1
