"""Snapshots, restore validation, templates, pause/resume and fork on fakes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from sheesh.config import Settings
from sheesh.control.node_client import FakeNodeClient
from sheesh.control.vms import CreateVm
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from sheesh.models import Snapshot, SnapshotKind, VmState
from sheesh.node.contract import NodeVmSpec
from tests.fakes import ADMIN as KEY
from tests.fakes import FakeStack, fake_services

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


@pytest.fixture
def client(stack: FakeStack) -> tuple[TestClient, FakeNodeClient]:
    return stack.client, stack.node


def test_snapshot_restore_and_delete_rules(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, node = client
    vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
    r = c.post(f"/v1/vms/{vm}/snapshots", headers=KEY)
    assert r.status_code == 201
    snap = r.json()
    assert snap["id"].startswith("snap-") and snap["vmId"] == vm and snap["createdAt"].endswith("Z")
    assert [s["id"] for s in c.get("/v1/snapshots", headers=KEY).json()] == [snap["id"]]
    assert c.get(f"/v1/snapshots/{snap['id']}", headers=KEY).json()["memMb"] == 256

    r = c.post("/v1/vms", json={**VM, "memMb": 512, "snapshotId": snap["id"]}, headers=KEY)
    assert r.status_code == 400 and "must match the snapshot" in r.json()["message"]
    r = c.post("/v1/vms", json={**VM, "snapshotId": snap["id"], "diskSizeMb": 512}, headers=KEY)
    assert r.status_code == 400 and "snapshot's disk" in r.json()["message"]
    assert c.post("/v1/vms", json={**VM, "snapshotId": "snap-nope"}, headers=KEY).status_code == 404

    r = c.post("/v1/vms", json={**VM, "snapshotId": snap["id"], "diskSizeMb": 2048}, headers=KEY)
    assert r.status_code == 201
    restored = r.json()
    assert restored["provisionMode"] == "snapshot" and restored["snapshotId"] == snap["id"]
    assert restored["id"] != vm and restored["guestIp"] != c.get(f"/v1/vms/{vm}", headers=KEY).json()["guestIp"]
    spec = node.specs[restored["id"]]
    assert spec.snapshot_id == snap["id"] and spec.snapshot_disk_mb == 1024 and spec.disk_size_mb == 2048

    r = c.delete(f"/v1/snapshots/{snap['id']}", headers=KEY)
    assert r.status_code == 409 and restored["id"] in r.json()["message"]
    assert c.delete(f"/v1/vms/{restored['id']}", headers=KEY).status_code == 204
    assert c.delete(f"/v1/snapshots/{snap['id']}", headers=KEY).status_code == 204
    assert snap["id"] not in node.snapshots
    assert c.get(f"/v1/snapshots/{snap['id']}", headers=KEY).status_code == 404


def test_snapshot_needs_a_live_vm(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
    c.post(f"/v1/vms/{vm}/stop", headers=KEY)
    assert c.post(f"/v1/vms/{vm}/snapshots", headers=KEY).status_code == 409
    assert c.post("/v1/vms/vm-none/snapshots", headers=KEY).status_code == 404


def test_pause_resume_states(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, node = client
    vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
    assert c.post(f"/v1/vms/{vm}/resume", headers=KEY).status_code == 409
    assert c.post(f"/v1/vms/{vm}/pause", headers=KEY).status_code == 204
    assert c.get(f"/v1/vms/{vm}", headers=KEY).json()["state"] == "PAUSED"
    assert c.post(f"/v1/vms/{vm}/pause", headers=KEY).status_code == 409
    assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY).status_code == 409
    assert c.post(f"/v1/vms/{vm}/snapshots", headers=KEY).status_code == 201
    assert ("snapshot-nosync", vm) in node.calls, "a paused guest cannot be asked to sync"
    assert c.post(f"/v1/vms/{vm}/resume", headers=KEY).status_code == 204
    assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY).status_code == 200
    c.post(f"/v1/vms/{vm}/pause", headers=KEY)
    assert c.post(f"/v1/vms/{vm}/stop", headers=KEY).status_code == 204
    assert ("resume", vm) in node.calls[-3:]


def test_fork_makes_distinct_clones(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
    r = c.post(f"/v1/vms/{vm}/fork", json={"count": 3}, headers=KEY)
    assert r.status_code == 201
    body = r.json()
    ids = [v["id"] for v in body["vms"]]
    assert len(set(ids)) == 3 and vm not in ids
    assert len({v["guestIp"] for v in body["vms"]}) == 3
    assert all(v["snapshotId"] == body["snapshotId"] and v["provisionMode"] == "snapshot" for v in body["vms"])
    for bad in ({"count": 0}, {"count": 17}, {"count": "2"}):
        assert c.post(f"/v1/vms/{vm}/fork", json=bad, headers=KEY).status_code == 400
    assert c.post(f"/v1/vms/{vm}/fork", headers=KEY).status_code == 201


def test_fork_names_the_clones_it_could_not_make(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, node = client
    vm = c.post("/v1/vms", json=VM, headers=KEY).json()["id"]
    real_create, creates = node.create, []

    async def second_fails(spec: NodeVmSpec) -> None:
        creates.append(spec.vm_id)
        if len(creates) == 2:
            raise UnavailableError("the node ran out of patience")
        await real_create(spec)

    node.create = second_fails  # type: ignore[method-assign]
    r = c.post(f"/v1/vms/{vm}/fork", json={"count": 3}, headers=KEY)
    assert r.status_code == 201
    assert len(r.json()["vms"]) == 2 and r.json()["failed"] == ["the node ran out of patience"]
    assert len(c.get("/v1/vms", headers=KEY).json()) == 3, "the failed clone left no VM behind"


async def test_templates_serve_later_creates(settings: Settings) -> None:
    settings.templates = True
    svc, node = fake_services(settings)
    first = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    assert first.provision_mode == "boot"
    await svc.vms.templates.wait_idle()
    templates = [s for s in svc.store.list_snapshots() if s.kind == SnapshotKind.TEMPLATE]
    assert len(templates) == 1 and templates[0].disk_size_mb == 1024
    assert not [vm for vm in node.running if vm.startswith("tpl-")], "template VM was not destroyed"
    assert ("keep_spares", templates[0].id) in node.calls, "the node was not told to make spares of it"
    second = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    assert second.provision_mode == "snapshot" and second.snapshot_id == templates[0].id
    small = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], disk_size_mb=512))
    assert small.provision_mode == "boot", "a disk smaller than the template's must boot"
    other_shape = await svc.vms.create(CreateVm(cpu=2, mem_mb=256, allow_ips=[]))
    assert other_shape.provision_mode == "boot"
    assert svc.vms.list_snapshots() == [], "templates are not user snapshots"
    with pytest.raises(NotFoundError):
        svc.vms.snapshot(templates[0].id)
    assert second.state == VmState.RUNNING


async def test_templates_of_an_older_generation_are_ignored_and_pruned(settings: Settings) -> None:
    settings.templates = True
    svc, node = fake_services(settings)
    image = svc.store.list_images()[0].image.id
    old = [
        Snapshot(
            id=f"snap-tpl-{i}",
            vm_id="tpl-x",
            created_at=datetime.now(UTC),
            cpu=1,
            mem_mb=256,
            image_id=image,
            disk_size_mb=1024,
            kind=SnapshotKind.TEMPLATE,
            node=node.name,
        )
        for i in "ab"
    ]
    for snap in old:
        svc.store.add_snapshot(snap)
    assert svc.vms.templates.find(node.name, image, 1, 256) is None
    user = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    user.snapshot_id = "snap-tpl-b"  # a VM whose disk builds on the old template
    svc.store.save_vm(user)
    await svc.vms.templates.wait_idle()
    await svc.vms.templates.prune_stale()
    ids = {s.id for s in svc.store.list_snapshots()}
    assert "snap-tpl-a" not in ids and "snap-tpl-b" in ids and ("delete_snapshot", "snap-tpl-a") in node.calls
    assert svc.vms.templates.find(node.name, image, 1, 256) is not None, "a current-generation template was built"


async def test_restore_image_mismatch(settings: Settings) -> None:
    svc, _ = fake_services(settings)
    vm = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[]))
    snap = await svc.vms.create_snapshot(vm.id)
    with pytest.raises(InvalidInputError, match="imageId"):
        await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], image_id="img-other", snapshot_id=snap.id))
    with pytest.raises(ConflictError):
        await svc.vms.delete_snapshot((await svc.vms.fork(vm.id, 1))[0].id)


async def test_templates_of_the_configured_shapes_are_built_at_start(settings: Settings) -> None:
    settings.templates, settings.template_shapes = True, "1:256, 2:512"
    svc, node = fake_services(settings)
    await svc.start()
    await svc.vms.templates.wait_idle()
    image = svc.store.list_images()[0].image.id
    assert svc.vms.templates.find(node.name, image, 1, 256) is not None
    assert svc.vms.templates.find(node.name, image, 2, 512) is not None
    first = await svc.vms.create(CreateVm(cpu=2, mem_mb=512, allow_ips=[]))
    assert first.provision_mode == "snapshot", "the first create of a configured shape restores"
    await svc.start()  # a restart builds nothing already there
    await svc.vms.templates.wait_idle()
    assert len([s for s in svc.store.list_snapshots() if s.kind == SnapshotKind.TEMPLATE]) == 2

    settings.templates = False
    assert settings.prebuilt_shapes() == []
    with pytest.raises(ValueError):
        Settings(template_shapes="1x256")
