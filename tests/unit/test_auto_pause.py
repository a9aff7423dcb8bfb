"""Auto-pause (``SHEESH_AUTO_PAUSE_S``) on the fake stack: an unused sandbox is paused by the reconcile loop and
resumed by the next request that needs its guest; a VM with an operation in flight, a user's pause, full VMs
are left alone; off by default."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from tests.fakes import ADMIN, FakeStack, fake_services

GOOD = {"cpu": 1, "memMb": 256, "allowIps": []}


@pytest.fixture
def paused_stack(settings: Settings) -> Iterator[FakeStack]:
    settings.auto_pause_s = 0.5
    svc, node = fake_services(settings)
    with TestClient(create_app(svc)) as client:
        yield FakeStack(client=client, svc=svc, node=node)


def _state(stack: FakeStack, vm_id: str) -> str:
    return str(stack.client.get(f"/v1/vms/{vm_id}", headers=ADMIN).json()["state"])


def _wait_state(stack: FakeStack, vm_id: str, state: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while _state(stack, vm_id) != state:
        assert time.monotonic() < deadline, f"VM {vm_id} never {state}"
        time.sleep(0.05)


def test_an_unused_vm_is_paused_and_the_next_exec_resumes_it(paused_stack: FakeStack) -> None:
    c = paused_stack.client
    vm = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    _wait_state(paused_stack, vm, "PAUSED")
    assert ("pause", vm) in paused_stack.node.calls
    assert paused_stack.svc.store.get_vm(vm).auto_paused  # type: ignore[union-attr]
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "echo hi"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert ("resume", vm) in paused_stack.node.calls
    assert _state(paused_stack, vm) == "RUNNING"
    assert not paused_stack.svc.store.get_vm(vm).auto_paused  # type: ignore[union-attr]
    _wait_state(paused_stack, vm, "PAUSED")  # and paused again once unused


def test_files_and_console_tokens_resume_too(paused_stack: FakeStack) -> None:
    c = paused_stack.client
    vm = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    _wait_state(paused_stack, vm, "PAUSED")
    assert c.get(f"/v1/vms/{vm}/agentToken", headers=ADMIN).status_code == 200
    assert _state(paused_stack, vm) == "RUNNING"
    _wait_state(paused_stack, vm, "PAUSED")
    r = c.post(f"/v1/vms/{vm}/run-ts", json={"code": "console.log(1)"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert _state(paused_stack, vm) == "RUNNING"


def test_a_user_pause_is_not_undone_by_an_exec(paused_stack: FakeStack) -> None:
    c = paused_stack.client
    vm = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    assert c.post(f"/v1/vms/{vm}/pause", headers=ADMIN).status_code == 204
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=ADMIN)
    assert r.status_code == 409 and "PAUSED" in r.json()["message"]
    assert ("resume", vm) not in paused_stack.node.calls


def test_a_vm_with_an_exec_in_flight_is_not_paused(paused_stack: FakeStack) -> None:
    svc = paused_stack.svc
    vm = paused_stack.client.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    svc.vms.hold(vm)  # what an exec or a stream holds while it runs
    time.sleep(1.5)
    assert _state(paused_stack, vm) == "RUNNING"
    svc.vms.release(vm)
    _wait_state(paused_stack, vm, "PAUSED")


def test_full_vms_are_left_running(paused_stack: FakeStack) -> None:
    c = paused_stack.client
    full = c.post("/v1/vms", json={**GOOD, "kind": "full"}, headers=ADMIN)
    assert full.status_code == 201, full.text
    plain = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    _wait_state(paused_stack, plain, "PAUSED")
    assert _state(paused_stack, full.json()["id"]) == "RUNNING"


def test_concurrent_requests_resume_once(paused_stack: FakeStack) -> None:
    c = paused_stack.client
    vm = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    _wait_state(paused_stack, vm, "PAUSED")
    codes: list[int] = []

    def one() -> None:
        codes.append(c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=ADMIN).status_code)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 5
    assert paused_stack.node.calls.count(("resume", vm)) == 1


def test_off_by_default(stack: FakeStack) -> None:
    assert stack.svc.settings.auto_pause_s == 0
    vm = stack.client.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    time.sleep(1)
    assert _state(stack, vm) == "RUNNING"
    assert asyncio.run(stack.svc.vms.auto_pause()) == []
