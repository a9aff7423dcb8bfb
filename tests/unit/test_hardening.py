"""Issue 12 on fakes: key expiry range, /purge lockout, rate-limit identity, the hashing pool, allowIps inside the
guest pool, hidden template snapshots, execution history, crash recovery and exit reasons."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.auth.hashpool import HashPool
from sheesh.config import Settings
from sheesh.control.node_client import FakeNodeClient
from sheesh.control.services import Services
from sheesh.control.vms import CreateVm
from sheesh.errors import RateLimitedError
from sheesh.models import ExecRequest, ExecResult, VmState
from tests.fakes import ADMIN, FakeStack, fake_services

VM = {"cpu": 1, "memMb": 256, "allowIps": []}
PASSWORD = "correct horse battery"


@pytest.fixture
def app(stack: FakeStack) -> tuple[TestClient, Services, FakeNodeClient]:
    return stack.client, stack.svc, stack.node


def test_expires_at_out_of_range_is_400_and_stores_nothing(app: tuple[TestClient, Services, FakeNodeClient]) -> None:
    c, _, _ = app
    before = len(c.get("/v1/api-keys", headers=ADMIN).json())
    for bad in ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59Z", "2001-01-01T00:00:00Z", "2030-01-01T00:00:00"):
        r = c.post("/v1/api-keys", json={"expiresAt": bad}, headers=ADMIN)
        assert r.status_code == 400, (bad, r.text)
        assert "expiresAt" in r.json()["message"]
    assert len(c.get("/v1/api-keys", headers=ADMIN).json()) == before
    r = c.post("/v1/api-keys", json={"expiresAt": "2099-06-01T12:00:00+02:00"}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["expiresAt"].startswith("2099-06-01T10:00:00")


def test_purge_shares_the_login_lockout(app: tuple[TestClient, Services, FakeNodeClient]) -> None:
    c, svc, _ = app
    assert c.post("/v1/users", json={"username": "carol", "password": PASSWORD}, headers=ADMIN).status_code == 201
    statuses = [c.post("/purge", json={"username": "carol", "password": "wrong"}).status_code for _ in range(7)]
    assert statuses[:5] == [403] * 5 and 429 in statuses[5:], statuses
    # locked: the right password is refused too, by /purge and by /auth alike
    r = c.post("/purge", json={"username": "carol", "password": PASSWORD})
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert c.post("/auth", json={"username": "carol", "password": PASSWORD}).status_code == 429
    user = svc.store.get_user_by_name("carol")
    assert user is not None and user.locked_until is not None and user.locked_until > datetime.now(UTC)


def test_rate_limit_counts_the_user_not_the_header_spelling(settings: Settings) -> None:
    settings.global_rate_limit = 10
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        spellings = [ADMIN, {"Authorization": "Bearer   test-key"}, {"authorization": "bearer test-key"}]
        codes = [c.get("/v1/vms", headers=spellings[i % 3]).status_code for i in range(13)]
        assert codes[:10] == [200] * 10 and codes[10:] == [429] * 3, codes
        # junk credentials all count against the client address
        junk = [c.get("/v1/vms", headers={"X-API-Key": f"junk-{i}"}).status_code for i in range(12)]
        assert junk[:10] == [401] * 10 and junk[10:] == [429, 429], junk


async def test_hashing_pool_caps_each_client_and_keeps_the_loop_free() -> None:
    pool = HashPool(workers=2, per_client=2)
    started = time.monotonic()

    def slow() -> str:
        time.sleep(0.3)
        return "done"

    first = asyncio.ensure_future(pool.run("1.2.3.4", slow))
    second = asyncio.ensure_future(pool.run("1.2.3.4", slow))
    await asyncio.sleep(0.05)
    with pytest.raises(RateLimitedError):
        await pool.run("1.2.3.4", slow)
    ticks = 0
    while not first.done():  # the event loop keeps running while hashes are computed
        ticks += 1
        await asyncio.sleep(0.01)
    assert ticks > 10
    assert await first == "done" and await second == "done"
    assert await pool.run("1.2.3.4", slow) == "done"  # the slots are free again
    assert time.monotonic() - started < 2
    pool.close()


def test_concurrent_logins_do_not_stall_other_requests(app: tuple[TestClient, Services, FakeNodeClient]) -> None:
    c, svc, _ = app
    svc.hashing = HashPool(workers=1, per_client=1000)
    calls = 0

    def slow_check(*_: object) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        raise RateLimitedError("slow", 1)

    svc.auth.check_password = slow_check  # type: ignore[method-assign]
    threads = [
        threading.Thread(target=c.post, args=("/auth",), kwargs={"json": {"username": "a", "password": "b"}})
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.1)
        assert c.get("/v1/vms", headers=ADMIN).status_code == 200
        # ten checks take 2 s on the one hashing thread: the GET did not wait for them
        assert calls < 6, f"a plain GET waited for {calls} password checks"
    finally:
        for t in threads:
            t.join()
    assert calls == 10


def test_allow_ips_inside_the_guest_pool_are_refused(app: tuple[TestClient, Services, FakeNodeClient]) -> None:
    c, svc, _ = app
    pool = svc.settings.guest_network  # 172.16.0.0/16 by default
    assert pool == "172.16.0.0/16"
    for bad in (["172.16.0.7/32"], ["172.16.4.0/24"], ["10.0.0.0/8", "172.16.0.0/16"]):
        r = c.post("/v1/vms", json={**VM, "allowIps": bad}, headers=ADMIN)
        assert r.status_code == 400 and "guest network" in r.json()["message"], r.text
    for good in (["172.16.0.1/32"], ["0.0.0.0/0"], ["172.16.0.0/12"], ["10.1.2.3/32"]):
        assert c.post("/v1/vms", json={**VM, "allowIps": good}, headers=ADMIN).status_code == 201, good
    assert len(c.get("/v1/vms", headers=ADMIN).json()) == 4


async def test_template_snapshot_ids_do_not_leak(settings: Settings) -> None:
    settings.templates = True
    svc, _ = fake_services(settings)
    first = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    await svc.vms.templates.wait_idle()
    second = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    assert second.snapshot_id is not None and second.snapshot_id.startswith("snap-tpl-")
    with TestClient(create_app(svc, close_services=False)) as c:
        for vm in (first, second):
            assert c.get(f"/v1/vms/{vm.id}", headers=ADMIN).json()["snapshotId"] is None
        assert all(v["snapshotId"] is None for v in c.get("/v1/vms", headers=ADMIN).json())
        snap = c.post(f"/v1/vms/{first.id}/snapshots", headers=ADMIN).json()
        restored = c.post("/v1/vms", json={**VM, "snapshotId": snap["id"]}, headers=ADMIN).json()
        assert restored["snapshotId"] == snap["id"]


def test_exec_logs_are_kept_bounded_owner_scoped_and_deleted_with_the_vm(
    app: tuple[TestClient, Services, FakeNodeClient],
) -> None:
    c, svc, node = app
    vm = c.post("/v1/vms", json=VM, headers=ADMIN).json()["id"]
    node.exec_result = ExecResult(7, "o" * 5000, "err")
    assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "echo hi"}, headers=ADMIN).status_code == 200
    c.post(f"/v1/vms/{vm}/run-ts", json={"code": "console.log(1)"}, headers=ADMIN)
    c.post(f"/v1/vms/{vm}/run-js", json={"path": "/workspace/a.mjs"}, headers=ADMIN)
    logs = c.get(f"/v1/vms/{vm}/exec-logs", headers=ADMIN).json()
    assert [e["type"] for e in logs] == ["run-js", "run-ts", "exec"]
    js, ts, sh = logs
    assert js["command"] == "/workspace/a.mjs" and ts["command"].startswith("sha256:")
    assert sh["command"] == "echo hi" and sh["exitCode"] == 7 and len(sh["stdoutTail"]) == 2048
    assert [e["type"] for e in c.get(f"/v1/vms/{vm}/exec-logs?type=run-ts", headers=ADMIN).json()] == ["run-ts"]
    assert len(c.get(f"/v1/vms/{vm}/exec-logs?limit=1", headers=ADMIN).json()) == 1
    for bad in ("limit=0", "limit=201", "type=shell"):
        assert c.get(f"/v1/vms/{vm}/exec-logs?{bad}", headers=ADMIN).status_code == 400
    # another user sees nothing of it
    assert c.post("/v1/users", json={"username": "dave", "password": PASSWORD}, headers=ADMIN).status_code == 201
    dave = svc.store.get_user_by_name("dave")
    assert dave is not None
    other = {"X-API-Key": svc.auth.create_key(dave.id, "k")[1]}
    assert c.get(f"/v1/vms/{vm}/exec-logs", headers=other).status_code == 404
    # failures are recorded too, and the history is bounded
    node.fail_next = RateLimitedError("guest busy", 1)
    c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=ADMIN)
    assert c.get(f"/v1/vms/{vm}/exec-logs?limit=1", headers=ADMIN).json()[0]["error"] == "guest busy"
    for i in range(210):
        asyncio.run(svc.execs.exec(vm, ExecRequest(f"n{i}")))
    assert len(svc.vms.history.list(vm, None, 1000)) == 200
    assert c.delete(f"/v1/vms/{vm}", headers=ADMIN).status_code == 204
    assert svc.store.list_exec_logs(vm, None, 1000) == []


async def test_recover_rolls_back_interrupted_creates_and_starts(settings: Settings) -> None:
    svc, node = fake_services(settings)
    creating = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    starting = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    for vm, state in ((creating, VmState.CREATING), (starting, VmState.STARTING)):
        vm.state = state
        svc.store.save_vm(vm)
    await svc.vms.recover()
    assert svc.store.get_vm(creating.id) is None
    assert ("destroy", creating.id) in node.calls
    after = svc.store.get_vm(starting.id)
    assert after is not None and after.state == VmState.STOPPED and "interrupted" in str(after.error)
    assert ("stop", starting.id) in node.calls


async def test_a_machine_that_ended_says_why(settings: Settings) -> None:
    svc, node = fake_services(settings)
    vm = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    node.running.discard(vm.id)
    node.exits[vm.id] = "the VM's process was killed by SIGKILL"
    await svc.vms.reconcile()
    after = svc.vms.get(vm.id)
    assert after.state == VmState.STOPPED and after.error == "the VM's process was killed by SIGKILL"


def test_openapi_describes_what_the_server_does(app: tuple[TestClient, Services, FakeNodeClient]) -> None:
    c, _, _ = app
    doc = c.get("/openapi.json").json()
    assert "422" not in str(doc) and "HTTPValidationError" not in doc["components"]["schemas"]
    otp = doc["components"]["schemas"]["LoginBody"]["properties"]["otp"]
    assert otp == {"type": "string", "title": "Otp", "nullable": True}  # not "anything"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"401", "403", "429"} <= codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= codes, (method, path)
            if "{vm_id}" in path:
                assert {"404", "409", "503"} <= codes, (method, path)
    # a wrong type for a nullable string is refused, as the document says
    assert c.post("/auth", json={"username": "admin", "password": "x", "otp": 123456}).status_code == 400
