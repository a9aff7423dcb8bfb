"""Kyun's surface: x-auth-token with an API key or a login token, /services/danbo/{id} and its agentToken with
the seed's 2FA rule (an API key needs a passcode, a login token does not), /endpoints."""

from __future__ import annotations

import pyotp
from fastapi.testclient import TestClient

from tests.fakes import ADMIN, PASSWORD, FakeStack, user_headers

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


def test_danbo_paths_and_the_two_token_types(stack: FakeStack) -> None:
    c: TestClient = stack.client
    key = {"x-auth-token": user_headers(c, "alice")["X-API-Key"]}
    vm = c.post("/v1/vms", json=VM, headers=key).json()["id"]
    danbo = c.get(f"/services/danbo/{vm}", headers=key).json()
    assert danbo["id"] == vm and danbo["nodeHostname"] == "127.0.0.1" and danbo["nodePort"] == 1337
    token = c.get(f"/services/danbo/{vm}/agentToken", headers=key).json()
    assert token["token"] and token["url"] == "ws://127.0.0.1:1337"

    login = c.post("/auth", json={"username": "alice", "password": PASSWORD}).json()
    assert c.get(f"/services/danbo/{vm}", headers={"x-auth-token": login}).json()["id"] == vm
    assert c.get(f"/services/danbo/{vm}", headers={"x-auth-token": login + "x"}).status_code == 403
    assert c.get(f"/services/danbo/{vm}", headers={"x-auth-token": "nope"}).status_code == 401
    bob = {"x-auth-token": user_headers(c, "bob")["X-API-Key"]}
    assert c.get(f"/services/danbo/{vm}", headers=bob).status_code == 404
    assert c.get("/services/danbo/vm-none", headers=ADMIN).status_code == 404

    # 2FA on: an API key needs a passcode for agent tokens, a login token (2FA checked at login) does not
    secret = c.post("/v1/auth/totp", headers=key).json()["secret"]
    totp = pyotp.TOTP(secret)
    assert c.post("/v1/auth/totp/verify", json={"otp": totp.now()}, headers=key).status_code == 204
    r = c.get(f"/services/danbo/{vm}/agentToken", headers=key)
    assert r.status_code == 403 and "one-time passcode" in r.json()["message"]
    assert c.get(f"/services/danbo/{vm}/agentToken", params={"otp": totp.now()}, headers=key).status_code == 200
    login = c.post("/auth", json={"username": "alice", "password": PASSWORD, "otp": totp.now()}).json()
    assert c.get(f"/services/danbo/{vm}/agentToken", headers={"x-auth-token": login}).status_code == 200
