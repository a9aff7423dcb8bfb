"""The nodes API and the node service: listing with capacity and allocation, drain/undrain, delete; placement,
heartbeats, missed heartbeats and the return, on the fake node and remote fake nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sheesh.config import Settings
from sheesh.control.node_client import FakeNodeClient
from sheesh.control.services import Services
from sheesh.control.vms import CreateVm
from sheesh.errors import ForbiddenError, InvalidInputError, UnavailableError
from sheesh.models import NodeRecord, NodeState, VmState
from sheesh.node.contract import NodeCapacity, NodeClient, NodeStatus
from sheesh.store.memory import MemoryStore
from tests.fakes import ADMIN, FakeStack, add_default_image, user_headers

VM = {"cpu": 2, "memMb": 512, "allowIps": []}


def test_nodes_list_drain_undrain_delete(stack: FakeStack) -> None:
    c = stack.client
    assert c.get("/v1/nodes", headers=user_headers(c, "alice")).status_code == 403
    vm = c.post("/v1/vms", json=VM, headers=ADMIN).json()["id"]
    (node,) = c.get("/v1/nodes", headers=ADMIN).json()
    assert node["name"] == "fake" and node["state"] == "READY" and node["region"] == "local"
    assert node["capacity"] == {"vcpus": 8, "memMb": 16384, "diskMb": 100_000, "diskFreeMb": 90_000}
    assert node["allocated"] == {"vcpus": 2, "memMb": 512} and node["vms"] == 1 and node["lastHeartbeat"]
    assert c.get(f"/v1/vms/{vm}", headers=ADMIN).json()["node"] == "fake"

    assert c.post("/v1/nodes/fake/drain", headers=ADMIN).json()["state"] == "DRAINING"
    r = c.post("/v1/vms", json=VM, headers=ADMIN)
    assert (
        r.status_code == 503
        and r.json()["message"] == "no node takes a new VM of 2 vCPU / 512 MiB: node fake is DRAINING"
    )
    assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=ADMIN).status_code == 200, "its VMs keep going"
    assert c.post("/v1/nodes/fake/undrain", headers=ADMIN).json()["state"] == "READY"
    assert c.post("/v1/vms", json=VM, headers=ADMIN).status_code == 201

    r = c.delete("/v1/nodes/fake", headers=ADMIN)
    assert r.status_code == 409 and "holds VMs" in r.json()["message"]
    assert c.post("/v1/nodes/nope/drain", headers=ADMIN).status_code == 404
    assert c.delete("/v1/nodes/nope", headers=ADMIN).status_code == 404


class Fleet:
    """Services with the embedded fake node and remote fake nodes made on demand (one per record)."""

    def __init__(self, settings: Settings) -> None:
        self.remote: dict[str, FakeNodeClient] = {}
        store = MemoryStore()
        add_default_image(store, settings.data_dir / "img")
        self.local = FakeNodeClient()
        self.svc = Services.create(settings, store, self.local, self.connect)

    def connect(self, rec: NodeRecord) -> NodeClient:
        node = self.remote.setdefault(rec.id, FakeNodeClient())
        node.name = rec.id
        return node

    async def join(self, name: str, mem_mb: int = 1024, running: tuple[str, ...] = ()) -> NodeRecord:
        nodes = self.svc.nodes
        _, token = nodes.add(name)
        status = NodeStatus(
            name=name,
            capacity=NodeCapacity(vcpus=4, mem_mb=mem_mb, disk_mb=10_000, disk_free_mb=9_000),
            running=running,
        )
        rec = nodes.authenticate(name, token)
        return await nodes.heartbeat(rec, address="10.0.0.9", port=1337, tls=False, public_host=None, status=status)


REQ = CreateVm(cpu=1, mem_mb=256, allow_ips=[])


async def test_placement_fills_nodes_by_memory_and_names_what_is_missing(settings: Settings) -> None:
    fleet = Fleet(settings)
    await fleet.svc.nodes.sync()
    fleet.svc.nodes.set_state("fake", NodeState.DRAINING)
    await fleet.join("n1", mem_mb=512)
    await fleet.join("n2", mem_mb=512)
    made = [await fleet.svc.vms.create(REQ) for _ in range(4)]
    assert sorted(v.node for v in made) == ["n1", "n1", "n2", "n2"]
    with pytest.raises(UnavailableError) as exc:
        await fleet.svc.vms.create(REQ)
    assert exc.value.message == (
        "no node takes a new VM of 1 vCPU / 256 MiB: node fake is DRAINING; "
        "node n1 has 0 MiB of memory left; node n2 has 0 MiB of memory left"
    )
    fleet.svc.settings.mem_overcommit = 1.5
    assert (await fleet.svc.vms.create(REQ)).node in ("n1", "n2"), "overcommitted memory makes room"
    with pytest.raises(ForbiddenError):
        fleet.svc.nodes.authenticate("n1", "not-its-token")
    with pytest.raises(InvalidInputError):
        fleet.svc.nodes.add("N1!")


async def test_missed_heartbeats_and_the_return(settings: Settings) -> None:
    fleet = Fleet(settings)
    await fleet.svc.nodes.sync()
    fleet.svc.nodes.set_state("fake", NodeState.DRAINING)
    await fleet.join("n1")
    kept, lost = await fleet.svc.vms.create(REQ), await fleet.svc.vms.create(REQ)
    rec = fleet.svc.store.get_record(NodeRecord, "n1")
    assert rec is not None
    rec.last_heartbeat = datetime.now(UTC) - timedelta(seconds=settings.node_timeout_s + 1)
    fleet.svc.store.save_record(rec)
    assert fleet.svc.nodes.check() == [], "a control plane that just started gives the nodes time to report"
    fleet.svc.nodes.judging_since = datetime.now(UTC) - timedelta(seconds=settings.node_timeout_s + 1)
    assert fleet.svc.nodes.check() == ["n1"]
    assert {fleet.svc.vms.get(v.id).state for v in (kept, lost)} == {VmState.UNREACHABLE}
    with pytest.raises(UnavailableError, match="node n1, which is unreachable"):
        await fleet.svc.vms.stop(kept.id)
    with pytest.raises(UnavailableError, match="node n1 is UNREACHABLE"):
        await fleet.svc.vms.create(REQ)

    fleet.remote["n1"].running.discard(lost.id)
    status = await fleet.remote["n1"].status()
    rec = fleet.svc.nodes.get("n1")
    await fleet.svc.nodes.heartbeat(rec, address="10.0.0.9", port=1337, tls=False, public_host=None, status=status)
    assert fleet.svc.vms.get(kept.id).state == VmState.RUNNING
    assert fleet.svc.vms.get(lost.id).state == VmState.STOPPED and "unreachable" in (
        fleet.svc.vms.get(lost.id).error or ""
    )


async def test_reconcile_asks_a_remote_node_only_about_vms_it_did_not_report(settings: Settings) -> None:
    fleet = Fleet(settings)
    await fleet.svc.nodes.sync()
    fleet.svc.nodes.set_state("fake", NodeState.DRAINING)
    await fleet.join("n1")
    vm = await fleet.svc.vms.create(REQ)
    node = fleet.remote["n1"]
    await fleet.svc.vms.reconcile()
    assert node.asked == [vm.id], "not in the last heartbeat yet: asked"
    rec = fleet.svc.store.get_record(NodeRecord, "n1")
    assert rec is not None
    await fleet.svc.nodes.heartbeat(
        rec, address="10.0.0.9", port=1337, tls=False, public_host=None, status=await node.status()
    )
    await fleet.svc.vms.reconcile()
    assert node.asked == [vm.id], "listed as running: not asked again"
