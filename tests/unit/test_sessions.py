"""karma.run signatures, the rds_session cookie, login lockout and the global rate limit headers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.services import Services
from tests.fakes import fake_services

ADMIN = {"X-API-Key": "test-key"}
PASSWORD = "correct horse battery"


@pytest.fixture
def app(settings: Settings) -> Iterator[tuple[TestClient, Services]]:
    settings.login_lockout_s = 2
    settings.login_max_failures = 3
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        c.post("/v1/users", json={"username": "alice", "password": PASSWORD}, headers=ADMIN)
        yield c, svc


def test_karma_signature_flow(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    r = c.post("/auth", json={"username": "alice", "password": PASSWORD}, headers={"X-Karma-Codec": "json"})
    assert r.status_code == 200
    sig = r.json()
    assert isinstance(sig, str)
    me = c.get("/v1/users/me", headers={"X-Karma-Signature": sig})
    assert me.status_code == 200 and me.json()["username"] == "alice"
    fresh = c.get("/auth", headers={"X-Karma-Signature": sig})
    assert fresh.status_code == 200 and fresh.json() != sig
    assert c.get("/v1/vms", headers={"X-Karma-Signature": fresh.json()}).status_code == 200

    body, _, mac = sig.partition(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    for bad in (tampered, sig + "x", "garbage", body):
        assert c.get("/auth", headers={"X-Karma-Signature": bad}).status_code == 403
        assert c.get("/v1/vms", headers={"X-Karma-Signature": bad}).status_code == 403
    expired = svc.sessions.issue(svc.store.get_user_by_name("alice").id, "signature", -1)  # type: ignore[union-attr]
    r = c.get("/auth", headers={"X-Karma-Signature": expired})
    assert r.status_code == 403 and "expired" in r.json()["message"]
    assert c.get("/auth").status_code == 403
    assert (
        c.post("/auth", json={"username": "alice", "password": PASSWORD}, headers={"X-Karma-Codec": "cbor"}).status_code
        == 400
    )
    r = c.post("/auth", json={"username": "alice", "password": "nope"})
    assert r.status_code == 403 and r.json() == {"message": "invalid username or password"}
    assert c.post("/auth", json={"username": "nobody", "password": "x"}).status_code == 403


def test_signature_lifetime_is_15_minutes(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    sig = c.post("/auth", json={"username": "alice", "password": PASSWORD}).json()
    claims = svc.sessions.verify(sig, "signature")
    assert abs(claims.expires_at - time.time() - 15 * 60) < 5
    cookie_token = svc.sessions.issue(claims.user_id, "cookie", 60)
    assert c.get("/auth", headers={"X-Karma-Signature": cookie_token}).status_code == 403, "kinds are distinct"


def test_cookie_login_logout(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    r = c.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert "rds_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert c.get("/v1/users/me").json()["username"] == "alice"  # the client keeps the cookie
    c.post("/auth/logout")
    assert c.get("/v1/users/me").status_code == 401
    c.cookies.set("rds_session", "forged.token")
    assert c.get("/v1/users/me").status_code == 403


def test_brute_force_locks_out_with_backoff(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    codes = [c.post("/auth", json={"username": "alice", "password": f"guess{i}"}).status_code for i in range(3)]
    assert codes == [403, 403, 403]
    r = c.post("/auth", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 429, "the right password must not work while locked"
    assert int(r.headers["Retry-After"]) >= 1
    time.sleep(2.1)
    assert c.post("/auth", json={"username": "alice", "password": "guess4"}).status_code == 403
    user = svc.store.get_user_by_name("alice")
    assert user is not None and user.failed_logins == 4 and user.locked_until is not None
    locked_for = (user.locked_until - user.created_at).total_seconds()
    assert locked_for > 0
    assert c.post("/auth/login", json={"username": "alice", "password": PASSWORD}).status_code == 429
    time.sleep(4.1)  # doubled: 4 s
    assert c.post("/auth", json={"username": "alice", "password": PASSWORD}).status_code == 200
    user = svc.store.get_user_by_name("alice")
    assert user is not None and user.failed_logins == 0 and user.locked_until is None


def test_global_limit_headers(settings: Settings) -> None:
    settings.global_rate_limit = 5
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        seen = []
        for _ in range(7):
            r = c.get("/v1/vms", headers=ADMIN)
            limit, remaining = int(r.headers["X-RateLimit-Limit"]), int(r.headers["X-RateLimit-Remaining"])
            assert remaining < limit == 5
            assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time())
            seen.append((r.status_code, remaining))
        assert seen == [(200, 4), (200, 3), (200, 2), (200, 1), (200, 0), (429, 0), (429, 0)]
        assert r.json()["message"].startswith("rate limit exceeded") and "Retry-After" in r.headers
        # another credential (and anonymous callers, by address) have budgets of their own
        assert c.get("/docs").headers["X-RateLimit-Remaining"] == "4"
        assert c.get("/v1/vms", headers={"x-auth-token": "other"}).status_code == 401
