"""The whole control plane + node agent in-process on the fake VMM driver (real guest agent processes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.vmm.fake import FakeDriver
from tests.vmmstack import GOOD, KEY, kill_leftovers, vmm_services


def _exec(c: TestClient, vm: str, **body: object) -> dict[str, object]:
    r = c.post(f"/v1/vms/{vm}/exec", json=body, headers=KEY)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_create_exec_stop_start_delete(vmm_stack: tuple[TestClient, FakeDriver], settings: Settings) -> None:
    c, driver = vmm_stack
    r = c.post("/v1/vms", json=GOOD, headers=KEY)
    assert r.status_code == 201, r.text
    vm = r.json()["id"]
    out = _exec(c, vm, cmd="echo hello; echo oops >&2; pwd; exit 7", env={"X": "1"})
    assert out["stdout"] == f"hello\n{settings.vms_dir / vm / 'workspace'}\n"
    assert out["stderr"] == "oops\n" and out["exitCode"] == 7
    start = time.monotonic()
    out = _exec(c, vm, cmd="sleep 20", timeoutMs=300)
    assert out["timedOut"] is True and out["exitCode"] == 124 and time.monotonic() - start < 5
    _exec(c, vm, cmd="echo kept > f")
    assert c.post(f"/v1/vms/{vm}/stop", headers=KEY).status_code == 204
    assert driver.powerdowns == [vm]
    assert c.get(f"/v1/vms/{vm}", headers=KEY).json()["state"] == "STOPPED"
    assert c.post(f"/v1/vms/{vm}/start", headers=KEY).status_code == 204
    assert _exec(c, vm, cmd="cat f")["stdout"] == "kept\n"
    assert c.delete(f"/v1/vms/{vm}", headers=KEY).status_code == 204
    assert not (settings.vms_dir / vm).exists()
    assert c.get("/v1/vms", headers=KEY).json() == []


def test_concurrent_execs_are_multiplexed(vmm_stack: tuple[TestClient, FakeDriver]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c, _ = vmm_stack
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: _exec(c, vm, cmd=f"sleep 0.5; echo {i}"), range(8)))
    assert [o["stdout"] for o in outs] == [f"{i}\n" for i in range(8)]
    assert time.monotonic() - start < 3.5, "execs ran one after another"


def test_guest_that_powers_off_is_marked_stopped(vmm_stack: tuple[TestClient, FakeDriver]) -> None:
    c, _ = vmm_stack
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    pid = int((Path(c.app.state.services.settings.vms_dir) / vm / "vmm.pid").read_text())  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while c.get(f"/v1/vms/{vm}", headers=KEY).json()["state"] != "STOPPED":
        assert time.monotonic() < deadline, "reconciler did not notice the VM stopped"
        time.sleep(0.1)
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY)
    assert r.status_code == 409


def test_boot_failure_is_reported_and_cleaned(vmm_stack: tuple[TestClient, FakeDriver], settings: Settings) -> None:
    c, driver = vmm_stack
    driver.fail_start = True
    r = c.post("/v1/vms", json=GOOD, headers=KEY)
    assert r.status_code == 500
    assert "fake start failure" in r.json()["message"]
    assert c.get("/v1/vms", headers=KEY).json() == []
    assert list(settings.vms_dir.iterdir()) == []


def test_restart_reattaches_running_vms(settings: Settings) -> None:
    try:
        with TestClient(create_app(vmm_services(settings, FakeDriver()))) as c:
            alive = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
            dead = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
            _exec(c, alive, cmd="echo before > note")
            dead_pid = int((settings.vms_dir / dead / "vmm.pid").read_text())
        # manager is gone; its VM processes are not. One of them dies while nobody watches.
        os.kill(dead_pid, signal.SIGKILL)
        time.sleep(0.2)
        with TestClient(create_app(vmm_services(settings, FakeDriver()))) as c:
            states = {v["id"]: v["state"] for v in c.get("/v1/vms", headers=KEY).json()}
            assert states == {alive: "RUNNING", dead: "STOPPED"}
            assert _exec(c, alive, cmd="cat note")["stdout"] == "before\n"
            assert c.post(f"/v1/vms/{dead}/start", headers=KEY).status_code == 204
            for vm in (alive, dead):
                assert c.delete(f"/v1/vms/{vm}", headers=KEY).status_code == 204
    finally:
        kill_leftovers(settings.vms_dir)
