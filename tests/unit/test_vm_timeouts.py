"""VM timeouts (``timeoutS`` on create, ``POST /v1/vms/:id/timeout``) on the fake stack: the reconcile loop
deletes or pauses a VM whose time ran out."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sheesh.models import VmState
from tests.fakes import ADMIN, FakeStack

GOOD = {"cpu": 1, "memMb": 256, "allowIps": []}


def _wait_for(stack: FakeStack, vm_id: str, gone: bool, timeout_s: float = 10) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout_s
    while True:
        r = stack.client.get(f"/v1/vms/{vm_id}", headers=ADMIN)
        if gone and r.status_code == 404:
            return None
        if not gone and r.json()["state"] == "PAUSED":
            return dict(r.json())
        assert time.monotonic() < deadline, f"VM {vm_id} still {r.json()}"
        time.sleep(0.1)


def test_a_vm_is_deleted_when_its_timeout_runs_out(stack: FakeStack) -> None:
    r = stack.client.post("/v1/vms", json={**GOOD, "timeoutS": 1}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(seconds=1) and body["onTimeout"] == "delete"
    keep = stack.client.post("/v1/vms", json=GOOD, headers=ADMIN).json()
    assert keep["expiresAt"] is None
    _wait_for(stack, body["id"], gone=True)
    assert ("destroy", body["id"]) in stack.node.calls
    assert stack.client.get(f"/v1/vms/{keep['id']}", headers=ADMIN).json()["state"] == "RUNNING"


def test_on_timeout_pause_pauses_and_clears_the_timeout(stack: FakeStack) -> None:
    vm = stack.client.post("/v1/vms", json={**GOOD, "timeoutS": 1, "onTimeout": "pause"}, headers=ADMIN).json()
    body = _wait_for(stack, vm["id"], gone=False)
    assert body is not None and body["expiresAt"] is None and ("pause", vm["id"]) in stack.node.calls


def test_the_timeout_can_be_changed_and_cleared(stack: FakeStack) -> None:
    vm = stack.client.post("/v1/vms", json={**GOOD, "timeoutS": 1}, headers=ADMIN).json()
    r = stack.client.post(f"/v1/vms/{vm['id']}/timeout", json={"timeoutS": 3600}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["expiresAt"] > vm["expiresAt"]
    r = stack.client.post(f"/v1/vms/{vm['id']}/timeout", json={"timeoutS": None}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["expiresAt"] is None
    time.sleep(1.5)  # the first timeout would have run out by now
    assert stack.svc.store.get_vm(vm["id"]) is not None


def test_bad_timeouts_are_refused(stack: FakeStack) -> None:
    c = stack.client
    for body, word in (
        ({**GOOD, "timeoutS": 0}, "timeoutS"),
        ({**GOOD, "timeoutS": 10**9}, "timeoutS"),
        ({**GOOD, "timeoutS": "soon"}, "timeoutS"),
        ({**GOOD, "onTimeout": "explode"}, "onTimeout"),
    ):
        r = c.post("/v1/vms", json=body, headers=ADMIN)
        assert r.status_code == 400 and word in r.json()["message"], r.text
    assert c.get("/v1/vms", headers=ADMIN).json() == [], "nothing was made"
    vm = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()
    assert c.post(f"/v1/vms/{vm['id']}/timeout", json={}, headers=ADMIN).status_code == 400
    assert c.post("/v1/vms/vm-nope/timeout", json={"timeoutS": 5}, headers=ADMIN).status_code == 404


async def test_expiry_after_a_restart_uses_the_stored_time(stack: FakeStack) -> None:
    """The expiry is a stored time: a service started later (a restart) still deletes the VM."""
    vm = stack.client.post("/v1/vms", json={**GOOD, "timeoutS": 3600}, headers=ADMIN).json()
    record = stack.svc.store.get_vm(vm["id"])
    assert record is not None and record.expires_at is not None and record.state == VmState.RUNNING
    assert await stack.svc.vms.expire(now=record.expires_at - timedelta(seconds=1)) == []
    assert await stack.svc.vms.expire(now=record.expires_at + timedelta(seconds=1)) == [vm["id"]]
    assert stack.svc.store.get_vm(vm["id"]) is None
