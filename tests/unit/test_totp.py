"""2FA: enrolment, verification, and the operations it protects (even when called with an API key)."""

from __future__ import annotations

from collections.abc import Iterator

import pyotp
import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.services import Services
from tests.fakes import fake_services

ADMIN = {"X-API-Key": "test-key"}
PASSWORD = "correct horse battery"


@pytest.fixture
def alice(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    svc: Services
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        c.post("/v1/users", json={"username": "alice", "password": PASSWORD}, headers=ADMIN)
        user = svc.store.get_user_by_name("alice")
        assert user is not None
        yield c, {"X-API-Key": svc.auth.create_key(user.id, "k")[1]}


def test_enrol_verify_and_protected_operations(alice: tuple[TestClient, dict[str, str]]) -> None:
    c, key = alice
    r = c.post("/v1/auth/totp", headers=key)
    assert r.status_code == 201
    secret = r.json()["secret"]
    assert r.json()["otpauthUri"].startswith("otpauth://totp/sheesh:alice?secret=" + secret)
    totp = pyotp.TOTP(secret)
    # not on until verified: login still works without a passcode
    assert c.post("/auth", json={"username": "alice", "password": PASSWORD}).status_code == 200
    assert (
        c.post(
            "/v1/auth/totp/verify", json={"otp": "000000" if totp.now() != "000000" else "111111"}, headers=key
        ).status_code
        == 403
    )
    assert c.post("/v1/auth/totp/verify", json={"otp": totp.now()}, headers=key).status_code == 204
    assert c.get("/v1/users/me", headers=key).json()["totpEnabled"] is True
    assert c.post("/v1/auth/totp", headers=key).status_code == 409

    for path in ("/auth", "/auth/login"):
        r = c.post(path, json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 403 and "one-time passcode" in r.json()["message"]
        assert c.post(path, json={"username": "alice", "password": PASSWORD, "otp": "12345x"}).status_code == 403
        assert c.post(path, json={"username": "alice", "password": PASSWORD, "otp": totp.now()}).status_code in (
            200,
            204,
        )

    change = {"currentPassword": PASSWORD, "newPassword": "an even better passphrase"}
    r = c.post("/v1/users/me/password", json=change, headers=key)
    assert r.status_code == 403, "an API key alone must not change the password when 2FA is on"
    assert c.post("/v1/users/me/password", json={**change, "otp": totp.now()}, headers=key).status_code == 204
    assert c.post("/auth", json={"username": "alice", "password": PASSWORD, "otp": totp.now()}).status_code == 403
    new = {"username": "alice", "password": "an even better passphrase", "otp": totp.now()}
    assert c.post("/auth", json=new).status_code == 200

    assert c.request("DELETE", "/v1/auth/totp", json={"otp": "999999x"}, headers=key).status_code == 403
    assert c.request("DELETE", "/v1/auth/totp", json={"otp": totp.now()}, headers=key).status_code == 204
    assert c.post("/auth", json={"username": "alice", "password": "an even better passphrase"}).status_code == 200


def test_password_change_checks_the_current_password(alice: tuple[TestClient, dict[str, str]]) -> None:
    c, key = alice
    r = c.post("/v1/users/me/password", json={"currentPassword": "wrong", "newPassword": "x" * 12}, headers=key)
    assert r.status_code == 403
    r = c.post("/v1/users/me/password", json={"currentPassword": PASSWORD, "newPassword": "short"}, headers=key)
    assert r.status_code == 400
    assert c.post("/v1/auth/totp/verify", json={"otp": "123456"}, headers=key).status_code == 409


def test_agent_token_is_owner_only_and_2fa_protected(alice: tuple[TestClient, dict[str, str]]) -> None:
    c, key = alice
    vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=key).json()["id"]
    got = c.get(f"/v1/vms/{vm}", headers=key).json()
    assert got["nodePort"] == 1337 and got["nodeHost"]
    r = c.get(f"/v1/vms/{vm}/agentToken", headers=key)
    assert r.status_code == 200
    body = r.json()
    assert body["url"].startswith("ws://") and body["url"].endswith(":1337") and body["token"]
    assert c.get(f"/v1/vms/{vm}/agentToken", headers=ADMIN).status_code == 200  # admins see all
    c.post("/v1/users", json={"username": "bob", "password": PASSWORD}, headers=ADMIN)
    svc = c.app.state.services  # type: ignore[attr-defined]
    bob = {"X-API-Key": svc.auth.create_key(svc.store.get_user_by_name("bob").id, "k")[1]}
    assert c.get(f"/v1/vms/{vm}/agentToken", headers=bob).status_code == 404

    secret = c.post("/v1/auth/totp", headers=key).json()["secret"]
    totp = pyotp.TOTP(secret)
    c.post("/v1/auth/totp/verify", json={"otp": totp.now()}, headers=key)
    r = c.get(f"/v1/vms/{vm}/agentToken", headers=key)
    assert r.status_code == 403 and "one-time passcode" in r.json()["message"]
    assert c.get(f"/v1/vms/{vm}/agentToken", params={"otp": totp.now()}, headers=key).status_code == 200
    assert c.get(f"/v1/vms/{vm}/agentToken", headers={**key, "X-OTP": totp.now()}).status_code == 200
