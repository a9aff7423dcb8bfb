"""Users, API keys, token revocation and per-user isolation on fakes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from sheesh.control.services import Services
from sheesh.models import ApiKey
from tests.fakes import ADMIN, PASSWORD, FakeStack, user_headers

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


@pytest.fixture
def app(stack: FakeStack) -> tuple[TestClient, Services]:
    return stack.client, stack.svc


_user = user_headers


def test_three_header_conventions(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    for headers in (ADMIN, {"x-auth-token": "test-key"}, {"Authorization": "Bearer test-key"}):
        assert c.get("/v1/users/me", headers=headers).json()["username"] == "admin"
    for headers in ({"Authorization": "Basic test-key"}, {"x-auth-token": "nope"}, {}):
        assert c.get("/v1/vms", headers=headers).status_code == 401


def test_users_are_admin_managed(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    alice = _user(c, "alice")
    me = c.get("/v1/users/me", headers=alice).json()
    assert me["username"] == "alice" and me["role"] == "user"
    assert c.post("/v1/users", json={"username": "mallory", "password": PASSWORD}, headers=alice).status_code == 403
    assert c.get("/v1/users", headers=alice).status_code == 403
    assert {u["username"] for u in c.get("/v1/users", headers=ADMIN).json()} == {"admin", "alice"}
    assert c.post("/v1/users", json={"username": "alice", "password": PASSWORD}, headers=ADMIN).status_code == 409
    for bad in ({"username": "Al", "password": PASSWORD}, {"username": "bob", "password": "short"}):
        assert c.post("/v1/users", json=bad, headers=ADMIN).status_code == 400
    assert c.post("/v1/images", json={"name": "x"}, headers=alice).status_code == 403
    assert c.get("/v1/images", headers=alice).status_code == 200


def test_key_lifecycle_and_expiry(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    alice = _user(c, "alice")
    r = c.post("/v1/api-keys", json={"label": "ci"}, headers=alice)
    assert r.status_code == 201
    key = r.json()
    assert key["key"].startswith("sk_") and key["sha256"] == hashlib.sha256(key["key"].encode()).hexdigest()
    listed = c.get("/v1/api-keys", headers=alice).json()
    assert {k["label"] for k in listed} == {"first", "ci"} and all(k["key"] is None for k in listed)
    new = {"X-API-Key": key["key"]}
    assert c.get("/v1/users/me", headers=new).status_code == 200
    assert c.delete(f"/v1/api-keys/{key['id']}", headers=ADMIN).status_code == 204  # admin may delete any
    assert c.get("/v1/users/me", headers=new).status_code == 401
    assert c.delete("/v1/api-keys/key-none", headers=alice).status_code == 404

    past = datetime.now(UTC) - timedelta(seconds=1)
    user = svc.store.get_user_by_name("alice")
    assert user is not None
    svc.store.add_api_key(
        ApiKey(
            id="key-old",
            user_id=user.id,
            label="old",
            key_hash=hashlib.sha256(b"sk_old").hexdigest(),
            created_at=past,
            expires_at=past,
        )
    )
    assert c.get("/v1/users/me", headers={"X-API-Key": "sk_old"}).status_code == 401
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert c.post("/v1/api-keys", json={"expiresAt": soon}, headers=alice).json()["expiresAt"].endswith("Z")
    for bad in ({"expiresAt": past.isoformat()}, {"expiresAt": "2030-01-01T00:00:00"}, {"label": ""}):
        assert c.post("/v1/api-keys", json=bad, headers=alice).status_code == 400


def test_users_see_only_their_own_resources(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    alice, bob = _user(c, "alice"), _user(c, "bob")
    vm = c.post("/v1/vms", json=VM, headers=alice).json()["id"]
    snap = c.post(f"/v1/vms/{vm}/snapshots", headers=alice).json()["id"]
    assert [v["id"] for v in c.get("/v1/vms", headers=bob).json()] == []
    assert c.get("/v1/snapshots", headers=bob).json() == []
    for method, path, body in [
        ("GET", f"/v1/vms/{vm}", None),
        ("DELETE", f"/v1/vms/{vm}", None),
        ("POST", f"/v1/vms/{vm}/stop", None),
        ("POST", f"/v1/vms/{vm}/exec", {"cmd": "id"}),
        ("POST", f"/v1/vms/{vm}/snapshots", None),
        ("POST", f"/v1/vms/{vm}/fork", None),
        ("GET", f"/v1/vms/{vm}/logs", None),
        ("GET", f"/v1/snapshots/{snap}", None),
        ("DELETE", f"/v1/snapshots/{snap}", None),
        ("POST", "/v1/vms", {**VM, "snapshotId": snap}),
    ]:
        r = c.request(method, path, json=body, headers=bob)
        assert r.status_code == 404, (method, path, r.status_code)
    assert c.get(f"/v1/vms/{vm}", headers=alice).status_code == 200
    assert vm in [v["id"] for v in c.get("/v1/vms", headers=ADMIN).json()]
    forked = c.post(f"/v1/vms/{vm}/fork", headers=alice).json()["vms"][0]["id"]
    assert c.get(f"/v1/vms/{forked}", headers=alice).status_code == 200
    assert c.get(f"/v1/vms/{forked}", headers=bob).status_code == 404


def test_revoke_by_sha256_and_purge(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    alice, bob = _user(c, "alice"), _user(c, "bob")
    sha = hashlib.sha256(alice["X-API-Key"].encode()).hexdigest()
    assert c.post(f"/revoke/{sha}", headers=bob).status_code == 404, "another user's token"
    assert c.post("/revoke/not-hex", headers=alice).status_code == 400
    r = c.post(f"/revoke/{sha}", headers=alice)
    assert r.status_code == 200 and r.json() == {"revoked": sha}
    assert c.get("/v1/users/me", headers=alice).status_code == 401
    assert c.post(f"/revoke/{sha}", headers=alice).status_code == 401

    second = {"X-API-Key": c.post("/v1/api-keys", headers=bob).json()["key"]}
    assert c.post("/purge", json={"username": "bob", "password": "wrong"}).status_code == 403
    r = c.post("/purge", json={"username": "bob", "password": PASSWORD}, headers={"X-API-Key": "garbage"})
    assert r.status_code == 200 and r.json() == {"purged": 2}
    assert c.get("/v1/users/me", headers=bob).status_code == 401
    assert c.get("/v1/users/me", headers=second).status_code == 401
    assert c.post("/purge").status_code == 401


def test_admins_change_roles_and_delete_users(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    bob = _user(c, "bob")
    bob_id = c.get("/v1/users/me", headers=bob).json()["id"]
    admin_id = c.get("/v1/users/me", headers=ADMIN).json()["id"]
    assert c.get("/v1/users", headers=bob).status_code == 403
    assert c.patch(f"/v1/users/{bob_id}", json={"role": "admin"}, headers=bob).status_code == 403
    r = c.patch(f"/v1/users/{bob_id}", json={"role": "admin"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["role"] == "admin"
    assert c.get("/v1/users", headers=bob).status_code == 200
    assert c.patch(f"/v1/users/{bob_id}", json={"role": "user"}, headers=ADMIN).json()["role"] == "user"
    r = c.patch(f"/v1/users/{admin_id}", json={"role": "user"}, headers=ADMIN)
    assert r.status_code == 409 and "last admin" in r.json()["message"]
    assert c.patch(f"/v1/users/{bob_id}", json={"role": "root"}, headers=ADMIN).status_code == 400
    assert c.delete(f"/v1/users/{admin_id}", headers=ADMIN).status_code == 409
    vm = c.post("/v1/vms", json=VM, headers=bob).json()["id"]
    r = c.delete(f"/v1/users/{bob_id}", headers=ADMIN)
    assert r.status_code == 409 and vm in r.json()["message"]
    assert c.delete(f"/v1/vms/{vm}", headers=bob).status_code == 204
    assert c.delete(f"/v1/users/{bob_id}", headers=ADMIN).status_code == 204
    assert c.get("/v1/users/me", headers=bob).status_code == 401, "their keys went with them"
    assert svc.store.get_user(bob_id) is None
    assert c.delete(f"/v1/users/{bob_id}", headers=ADMIN).status_code == 404
