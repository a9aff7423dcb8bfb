"""GET /v1/vms served from the body built last for a viewer while no VM changed (``api.vmlists``): every
VM write, by this replica or another one on the same database, shows in the next list; viewers never see
each other's lists; a hit reads no VM row."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from sheesh.api.vmlists import CachedList, VmListCache
from sheesh.config import Settings
from sheesh.models import Vm, VmState
from tests.fakes import ADMIN, FakeStack, user_headers

GOOD = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"]}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.reconcile_interval_s = 3600.0  # no background VM write between two lists of a test
    return settings


def _ids(c: TestClient, headers: dict[str, str]) -> list[str]:
    r = c.get("/v1/vms", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    return [v["id"] for v in r.json()]


def test_lists_follow_every_vm_write_and_stay_per_viewer(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    c, svc = stack.client, stack.svc
    alice = user_headers(c, "alice")
    assert _ids(c, ADMIN) == [] and _ids(c, alice) == []
    mine = c.post("/v1/vms", json=GOOD, headers=alice).json()["id"]
    theirs = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
    assert _ids(c, alice) == [mine]
    assert _ids(c, ADMIN) == [mine, theirs]

    reads: list[int] = []
    list_vms = svc.store.list_vms

    def counted() -> list[Vm]:
        reads.append(1)
        return list_vms()

    monkeypatch.setattr(svc.store, "list_vms", counted)
    first = c.get("/v1/vms", headers=ADMIN).content
    assert c.get("/v1/vms", headers=ADMIN).content == first and reads == []  # nothing changed: no row read

    vm = svc.store.get_vm(theirs)  # a write as another replica would make it: straight to the store
    assert vm is not None
    svc.store.save_vm(dataclasses.replace(vm, state=VmState.STOPPED, error="stopped elsewhere"))
    listed = {v["id"]: v for v in c.get("/v1/vms", headers=ADMIN).json()}
    assert listed[theirs]["state"] == "STOPPED" and listed[theirs]["error"] == "stopped elsewhere"
    assert reads == [1]
    assert c.delete(f"/v1/vms/{mine}", headers=alice).status_code in (200, 204)
    assert _ids(c, alice) == [] and _ids(c, ADMIN) == [theirs]


def test_a_body_is_built_again_when_a_nodes_endpoint_moved(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    c, svc = stack.client, stack.svc
    c.post("/v1/vms", json=GOOD, headers=ADMIN)
    before = c.get("/v1/vms", headers=ADMIN).json()[0]
    endpoint = svc.nodes.endpoint
    monkeypatch.setattr(svc.nodes, "endpoint", lambda name: ("node.example", 4242, True))
    after = c.get("/v1/vms", headers=ADMIN).json()[0]
    assert (after["nodeHost"], after["nodePort"]) == ("node.example", 4242)
    assert (before["nodeHost"], before["nodePort"]) == endpoint(before["node"])[:2]


def test_the_cache_keeps_the_newest_bodies_only() -> None:
    lists = VmListCache(size=2)
    here = ("node.example", 1337, False)
    for scope in ("a", "b", "c"):
        lists.put(scope, CachedList(version=1, endpoints={"n1": here}, body=scope.encode()))
    assert lists.get("a", 1, lambda _: here) is None  # the oldest went
    hit = lists.get("b", 1, lambda _: here)
    assert hit is not None and hit.body == b"b"
    assert lists.get("b", 2, lambda _: here) is None  # another version: not served
    assert lists.get("b", 1, lambda _: ("elsewhere", 1337, False)) is None  # the node moved: not served


def test_one_vms_body_follows_its_writes_and_its_owner(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/vms/:id is kept the same way: built once per VM change, checked against the viewer on every hit
    (an admin's read does not open the VM to another user)."""
    c, svc = stack.client, stack.svc
    alice, bob = user_headers(c, "alice"), user_headers(c, "bob")
    vm_id = c.post("/v1/vms", json=GOOD, headers=alice).json()["id"]
    first = c.get(f"/v1/vms/{vm_id}", headers=ADMIN)
    assert first.status_code == 200 and first.json()["id"] == vm_id and first.json()["state"] == "RUNNING"
    assert first.headers["content-type"] == "application/json"
    reads: list[str] = []
    get_vm = svc.store.get_vm

    def counted(wanted: str) -> Vm | None:
        reads.append(wanted)
        return get_vm(wanted)

    monkeypatch.setattr(svc.store, "get_vm", counted)
    assert c.get(f"/v1/vms/{vm_id}", headers=alice).json() == first.json() and reads == []
    missing = c.get(f"/v1/vms/{vm_id}", headers=bob)
    assert missing.status_code == 404 and missing.json()["message"] == f"VM {vm_id} not found"
    assert c.get("/v1/vms/vm-nope", headers=ADMIN).status_code == 404
    vm = get_vm(vm_id)
    assert vm is not None
    svc.store.save_vm(dataclasses.replace(vm, state=VmState.STOPPED))  # as another replica would
    assert c.get(f"/v1/vms/{vm_id}", headers=alice).json()["state"] == "STOPPED"
    assert c.get(f"/v1/vms/{vm_id}", headers=bob).status_code == 404
