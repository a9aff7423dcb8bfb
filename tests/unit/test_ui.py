"""The web UI on the fake stack: login and logout, CSRF on every state-changing request made with the
cookie (UI and REST), what non-admins see, and the pages answering with HTML (errors too)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator

import pyotp
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.services import Services
from tests.fakes import fake_services

ADMIN = {"X-API-Key": "test-key"}
PASSWORD = "correct horse battery"


@pytest.fixture
def app(settings: Settings) -> Iterator[tuple[TestClient, Services]]:
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc), follow_redirects=False) as c:
        for name, role in (("alice", "admin"), ("bob", "user")):
            body = {"username": name, "password": PASSWORD, "role": role}
            assert c.post("/v1/users", json=body, headers=ADMIN).status_code == 201
        yield c, svc


def login(c: TestClient, username: str) -> str:
    """Log in through the form; the page's CSRF token."""
    r = c.post("/ui/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/ui/vms"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=strict" in r.headers["set-cookie"]
    page = c.get("/ui/vms")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert token is not None
    return token.group(1)


def test_login_required_and_bad_password(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    assert c.get("/ui/vms").headers["location"] == "/ui/login"
    assert c.get("/ui/vms", headers={"HX-Request": "true"}).headers["hx-redirect"] == "/ui/login"
    assert c.get("/ui").headers["location"] == "/ui/login"
    r = c.post("/ui/login", data={"username": "alice", "password": "wrong"})
    assert (
        r.status_code == 403
        and "invalid username or password" in r.text
        and "rds_session" not in r.headers.get("set-cookie", "")
    )
    assert c.get("/", headers={"Accept": "text/html"}).headers["location"] == "/ui"
    assert "commands" in c.get("/", headers={"Accept": "application/json"}).json(), "rerobots clients still get JSON"


def test_create_exec_and_delete_through_the_forms(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    csrf = login(c, "alice")
    hx = {"HX-Request": "true", "X-CSRF-Token": csrf}
    r = c.post("/ui/vms", data={"cpu": "1", "memMb": "256", "kind": "sandbox", "allowIps": ""}, headers=hx)
    assert r.status_code == 204, r.text
    vm_id = r.headers["hx-redirect"].rsplit("/", 1)[1]
    assert svc.vms.get(vm_id).owner_id == svc.store.get_user_by_name("alice").id  # type: ignore[union-attr]
    assert vm_id in c.get("/ui/vms/rows").text
    page = c.get(f"/ui/vms/{vm_id}")
    assert page.status_code == 200 and f"/ui/vms/{vm_id}/exec" in page.text
    c.get(f"/ui/vms/{vm_id}/usage")
    usage = c.get(f"/ui/vms/{vm_id}/usage").text
    assert 'id="usage-cpu"' in usage and "64.0 MiB" in usage, "the fake node's machine: a quarter of 256 MiB"
    out = c.post(f"/ui/vms/{vm_id}/exec", data={"cmd": "echo hi"}, headers=hx)
    assert out.status_code == 200 and 'id="exec-stdout"' in out.text
    bad = c.post("/ui/vms", data={"cpu": "99", "memMb": "256"}, headers=hx)
    assert bad.status_code == 400 and "cpu" in bad.text and 'class="error"' in bad.text
    assert len(svc.vms.list_vms()) == 1, "a refused form creates nothing"
    r = c.post(f"/ui/vms/{vm_id}/delete", headers=hx)
    assert r.headers["hx-redirect"] == "/ui/vms"
    assert svc.vms.list_vms() == []
    assert c.get(f"/ui/vms/{vm_id}").status_code == 404


def test_csrf_token_is_required_with_the_cookie(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    csrf = login(c, "alice")
    form = {"cpu": "1", "memMb": "256"}
    # a form posted from another page of the same site: the cookie goes along, the token cannot
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        r = c.post("/ui/vms", data=form, headers=headers)
        assert r.status_code == 403 and "CSRF" in r.text
    assert c.post("/ui/vms", data={**form, "csrf": "forged"}).status_code == 403
    assert svc.vms.list_vms() == []
    assert c.post("/ui/vms", data={**form, "csrf": csrf}).status_code == 303, "the form field works too"
    # the REST API, when the cookie is the credential
    body = {"cpu": 1, "memMb": 256, "allowIps": []}
    r = c.post("/v1/vms", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    assert c.post("/v1/vms", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert c.get("/v1/vms").status_code == 200, "reads need no token"
    assert c.post("/v1/vms", json=body, headers=ADMIN).status_code == 201, "an API key needs no token"
    assert len(svc.vms.list_vms()) == 3
    # logout is state-changing too
    assert c.post("/ui/logout").status_code == 403
    r = c.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and 'rds_session=""' in r.headers["set-cookie"]


def test_users_see_their_own_and_not_the_admin_pages(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    other = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=ADMIN).json()["id"]
    login(c, "bob")
    page = c.get("/ui/vms")
    assert other not in page.text and "/ui/users" not in page.text
    assert c.get(f"/ui/vms/{other}").status_code == 404
    r = c.get("/ui/users")
    assert r.status_code == 403 and "admin role required" in r.text
    csrf = login(c, "bob")
    r = c.post("/ui/users", data={"username": "eve", "password": PASSWORD, "csrf": csrf})
    assert r.status_code == 403 and svc.store.get_user_by_name("eve") is None
    csrf = login(c, "alice")
    assert "bob" in c.get("/ui/users").text
    bob = svc.store.get_user_by_name("bob")
    assert bob is not None
    assert c.post(f"/ui/users/{bob.id}/role", data={"role": "root", "csrf": csrf}).status_code == 400
    assert c.post(f"/ui/users/{bob.id}/role", data={"role": "admin", "csrf": csrf}).status_code == 303
    assert svc.store.get_user(bob.id).role.value == "admin"  # type: ignore[union-attr]


def test_api_key_is_shown_once_and_2fa_enrolment_has_a_qr(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    csrf = login(c, "alice")
    r = c.post("/ui/keys", data={"label": "laptop", "csrf": csrf})
    key = re.search(r"shown only now\): <code>([^<]+)</code>", r.text)
    assert key is not None and c.get("/v1/users/me", headers={"X-API-Key": key.group(1)}).status_code == 200
    assert key.group(1) not in c.get("/ui/keys").text
    hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    r = c.post("/ui/account/totp", headers=hx)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text)
    assert r.status_code == 200 and "<svg" in r.text and secret is not None
    assert c.post("/ui/account/totp/verify", data={"otp": "000000"}, headers=hx).status_code == 403
    r = c.post("/ui/account/totp/verify", data={"otp": pyotp.TOTP(secret.group(1)).now()}, headers=hx)
    assert r.status_code == 200 and "2FA is on" in r.text
    assert svc.store.get_user_by_name("alice").totp_enabled  # type: ignore[union-attr]
    assert c.post("/ui/login", data={"username": "alice", "password": PASSWORD}).status_code in (401, 403)


def test_images_and_nodes_pages(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    csrf = login(c, "alice")
    hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    assert c.post("/ui/images", data={"name": ""}, headers=hx).status_code == 400
    assert c.post("/ui/images", data={"name": "mine"}, headers=hx).headers["hx-redirect"] == "/ui/images"
    image = next(s.image for s in svc.images.list_images() if s.image.name == "mine")
    page = c.get("/ui/images").text
    assert f'id="kernel-{image.id}"' in page and "sheeshPut" in page
    # the browser PUTs the file to the REST route with the cookie: the CSRF token is required there too
    assert c.put(f"/v1/images/{image.id}/kernel", content=b"not a kernel").status_code == 403
    r = c.put(f"/v1/images/{image.id}/kernel", content=b"not a kernel", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 400, "checked by the REST route, as an upload by API key"
    nodes = c.get("/ui/nodes")
    assert nodes.status_code == 200 and "READY" in nodes.text
    node = c.get("/v1/nodes", headers=ADMIN).json()[0]["name"]
    assert c.post(f"/ui/nodes/{node}/drain", headers=hx).status_code == 204
    assert "DRAINING" in c.get("/ui/nodes").text
    c.post(f"/ui/nodes/{node}/undrain", headers=hx)
    assert c.get("/v1/nodes", headers=ADMIN).json()[0]["state"] == "READY"
    login(c, "bob")
    assert c.get("/ui/nodes").status_code == 403
    assert c.post("/ui/images", data={"name": "x"}, headers={"X-CSRF-Token": login(c, "bob")}).status_code == 403
    assert "sheeshPut" not in c.get("/ui/images").text


def test_a_cookie_websocket_must_come_from_this_origin(app: tuple[TestClient, Services]) -> None:
    c, _ = app
    vm_id = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=ADMIN).json()["id"]
    login(c, "alice")
    url = f"/v1/vms/{vm_id}/exec/stream"
    with c.websocket_connect(url, headers={"Origin": "http://evil.test"}) as ws:
        answer = ws.receive_json()
        assert answer["status"] == 403 and "cross-site WebSocket refused" in answer["message"]
        with pytest.raises(WebSocketDisconnect) as refused:
            ws.receive_text()
    assert refused.value.code == 4403
    with c.websocket_connect(url, headers={"Origin": "http://testserver"}) as ws:
        ws.send_text('{"cmd": "true"}')
        assert ws.receive_json()["type"] == "started"


def test_consoles_are_embedded_with_a_fresh_one_time_token(app: tuple[TestClient, Services]) -> None:
    c, svc = app
    body = {"cpu": 1, "memMb": 256, "allowIps": []}
    sandbox = c.post("/v1/vms", json=body, headers=ADMIN).json()["id"]
    full = c.post("/v1/vms", json={**body, "kind": "full"}, headers=ADMIN).json()["id"]
    login(c, "alice")
    assert 'id="open-vnc"' not in c.get(f"/ui/vms/{sandbox}").text
    assert 'id="open-vnc"' in c.get(f"/ui/vms/{full}").text
    refused = c.get(f"/ui/vms/{sandbox}/console?type=vnc", headers={"HX-Request": "true"})
    assert refused.status_code == 400 and "VNC is for full VMs" in refused.text
    frames = [c.get(f"/ui/vms/{full}/console?type={kind}").text for kind in ("serial", "vnc", "vnc")]
    tokens = [re.search(r"token=([^&\"]+)", f).group(1) for f in frames]  # type: ignore[union-attr]
    assert len(set(tokens)) == 3, "each opening gets its own one-time token"
    assert 'src="/console/vnc?token=' in frames[1]
    claims = svc.sessions.verify(urllib.parse.unquote(tokens[0]), "agent")
    assert claims.subject == full
