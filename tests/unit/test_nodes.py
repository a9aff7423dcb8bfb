"""The nodes API on the embedded node: listing with capacity and allocation, drain/undrain, delete."""

from __future__ import annotations

from tests.fakes import ADMIN, FakeStack, user_headers

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
