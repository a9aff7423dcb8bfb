"""run-ts, files, logs, rate limits and public docs on fakes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.auth.ratelimit import RateLimiter
from sheesh.config import Settings
from sheesh.control.node_client import FakeNodeClient
from tests.fakes import fake_services

KEY = {"X-API-Key": "test-key"}
VM = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32", "10.0.0.0/8"]}


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[TestClient, FakeNodeClient, str]]:
    svc, node = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
        yield c, node, vm


def test_limiter_window_and_retry_after() -> None:
    now = [1000.0]
    lim = RateLimiter(clock=lambda: now[0])
    decisions = [lim.hit("exec", "k", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after_s == 60
    now[0] += 30
    assert not lim.hit("exec", "k", 3).allowed
    assert lim.hit("exec", "other", 3).allowed
    now[0] += 30.5
    assert lim.hit("exec", "k", 3).allowed


def test_exec_rate_limit_429_with_retry_after(settings: Settings) -> None:
    settings.rate_limits = {**settings.rate_limits, "exec": 3}
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
        codes = [c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY)
        assert "rate limit" in r.json()["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        # other endpoints have their own budget; unauthenticated requests are refused before counting
        assert c.get(f"/v1/vms/{vm}", headers=KEY).status_code == 200
        assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).status_code == 401


def test_create_limit_is_30_per_minute(settings: Settings) -> None:
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        codes = [c.post("/v1/vms", json={**VM, "cpu": 9}, headers=KEY).status_code for _ in range(31)]
        assert codes[:30] == [400] * 30 and codes[30] == 429


def test_run_ts_passes_network_permission_from_vm(client: tuple[TestClient, FakeNodeClient, str]) -> None:
    c, _, vm = client
    r = c.post(f"/v1/vms/{vm}/run-ts", json={"code": "console.log(1)"}, headers=KEY)
    assert r.status_code == 200
    assert r.json()["result"] == {"allowNet": ["172.16.0.1"]}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "exactly one of code or path"),
        ({"code": "1", "path": "/workspace/a.ts"}, "exactly one of code or path"),
        ({"path": "/etc/a.ts"}, "under /workspace"),
        ({"path": "/workspace/a.js"}, ".ts file"),
        ({"code": "1", "env": ["NOEQUALS"]}, "KEY=value"),
        ({"code": "1", "env": ["1BAD=x"]}, "KEY=value"),
        ({"code": "1", "denoFlags": ["allow-all"]}, "flags"),
        ({"code": "1", "args": [1]}, "args"),
        ({"code": "1", "args": ["ok", "a\u0000b"]}, "args[1] contains a NUL byte"),
        ({"path": "/workspace/a\u0000.ts"}, "under /workspace"),
        ({"code": "1", "timeoutMs": -5}, "timeoutMs"),
    ],
)
def test_run_ts_rejects_bad_input(
    client: tuple[TestClient, FakeNodeClient, str], payload: dict[str, object], fragment: str
) -> None:
    c, _, vm = client
    r = c.post(f"/v1/vms/{vm}/run-ts", json=payload, headers=KEY)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]


def test_upload_checks_type_size_and_dest(client: tuple[TestClient, FakeNodeClient, str]) -> None:
    c, node, vm = client
    url = f"/v1/vms/{vm}/files/upload"
    gz = {**KEY, "content-type": "application/gzip"}
    r = c.post(url, params={"dest": "/workspace/p"}, content=b"x", headers={**KEY, "content-type": "text/plain"})
    assert r.status_code == 400 and "application/gzip" in r.json()["message"]
    assert c.post(url, params={"dest": "/etc"}, content=b"x", headers=gz).status_code == 400
    assert c.post(url, content=b"x", headers=gz).status_code == 400
    big = b"\0" * (10 * 1024 * 1024 + 1)
    r = c.post(url, params={"dest": "/workspace/p"}, content=big, headers=gz)
    assert r.status_code == 413
    r = c.post(url, params={"dest": "/workspace/p"}, content=iter([big[:5_000_000], big[5_000_000:]]), headers=gz)
    assert r.status_code == 413, "streamed (chunked) uploads are counted too"
    assert ("upload", vm) in node.calls
    assert node.uploads == {}
    assert c.post(url, params={"dest": "/workspace/p"}, content=b"data", headers=gz).status_code == 204
    r = c.get(f"/v1/vms/{vm}/files/download", params={"path": "/workspace/p"}, headers=KEY)
    assert r.status_code == 200 and r.content == b"data"
    assert r.headers["content-type"] == "application/gzip"
    assert c.get(f"/v1/vms/{vm}/files/download", params={"path": "/workspace/none"}, headers=KEY).status_code == 404
    assert c.get(f"/v1/vms/{vm}/files/download", params={"path": "/root"}, headers=KEY).status_code == 400


def test_logs(client: tuple[TestClient, FakeNodeClient, str]) -> None:
    c, _, vm = client
    r = c.get(f"/v1/vms/{vm}/logs", params={"type": "firecracker.stderr.log", "tail": 2}, headers=KEY)
    assert r.status_code == 200
    assert r.json() == {"vmId": vm, "type": "firecracker.stderr.log", "lines": ["stderr line 3", "stderr line 4"]}
    assert c.get(f"/v1/vms/{vm}/logs", headers=KEY).json()["lines"][0] == "serial line 0"
    for params in ({"tail": 1001}, {"tail": 0}, {"type": "passwd"}, {"tail": "x"}):
        assert c.get(f"/v1/vms/{vm}/logs", params=params, headers=KEY).status_code == 400
    assert c.get("/v1/vms/vm-none/logs", headers=KEY).status_code == 404


def test_public_docs_swagger_openapi(client: tuple[TestClient, FakeNodeClient, str]) -> None:
    c, _, _ = client
    spec = c.get("/openapi.json").json()
    assert spec["openapi"] == "3.0.3"
    text = str(spec)
    assert "'type': 'null'" not in text and "'const'" not in text
    paths = set(spec["paths"])
    assert {
        "/v1/vms",
        "/v1/vms/{vm_id}/exec",
        "/v1/vms/{vm_id}/run-ts",
        "/v1/vms/{vm_id}/files/upload",
        "/v1/vms/{vm_id}/files/download",
        "/v1/vms/{vm_id}/logs",
    } <= paths
    assert c.get("/swagger/openapi.json").json() == spec
    listed = c.get("/endpoints").json()
    assert {"method": "POST", "path": "/v1/vms/{vm_id}/exec"} in [
        {"method": e["method"], "path": e["path"]} for e in listed["endpoints"]
    ]
    assert len(listed["endpoints"]) >= len(paths) and all(e["summary"] for e in listed["endpoints"])
    page = c.get("/swagger")
    assert page.status_code == 200 and "/swagger/static/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    js = c.get("/swagger/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert c.get("/docs").status_code == 200
    api = c.get("/docs/api")
    assert api.status_code == 200 and "<table>" in api.text and "run-ts" in api.text
    assert c.get("/docs/api.md").text.startswith("# API reference")
    assert "exec/stream" in api.text and '"type": "resize"' in api.text
    for page, words in (("sdk", "exec_stream"), ("cli", "sheesh vm shell")):
        r = c.get(f"/docs/{page}")
        assert r.status_code == 200 and words in r.text and f'href="/docs/{page}"' in c.get("/docs").text
    assert c.get("/docs/..%2Fsecret").status_code == 404
    assert c.get("/docs/nope").status_code == 404


def test_console_pages_need_their_assets(client: tuple[TestClient, FakeNodeClient, str]) -> None:
    c, _, _ = client
    r = c.get("/console/vnc?token=x")
    assert r.status_code == 503 and "sheesh web fetch" in r.json()["message"]
    js = c.get("/console/page.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "const SHEESH_NODE_PORT = 1337;" in js.text and "function sheeshNodeUrl" in js.text
