"""Several hosts on the fake VMM: a ``sheesh serve`` control plane and two ``sheesh node`` processes (real
servers, real HTTP between them): VMs spread over both nodes, draining sends new VMs elsewhere, a killed node
agent makes its node and its VMs UNREACHABLE (503 naming it) and its restart brings them back RUNNING, and a
control-plane restart loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from sheesh.tls import self_signed
from tests.server import NodeProcess, ServerProcess, running_nodes, running_server, wait_for
from tests.server import nodes_by_name as nodes

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, NodeProcess]]]:
    image_dir = Settings().resolved_image_dir()
    ImageBuilder(image_dir).build()  # cached after setup
    env = {
        "SHEESH_VMM": "fake",
        "SHEESH_NETWORK": "off",
        "SHEESH_NODE_TIMEOUT_S": "2",
        "SHEESH_RECONCILE_INTERVAL_S": "0.3",
    }
    with running_server(tmp_path / "control", image_dir, **env) as srv:
        with srv.client() as c:
            tokens = {name: c.post("/v1/nodes", json={"name": name}).json()["token"] for name in ("n1", "n2")}
        procs = {
            name: NodeProcess(
                tmp_path / name,
                image_dir,
                control_url=srv.url,
                name=name,
                token=token,
                SHEESH_VMM="fake",
                SHEESH_NODE_REGION="eu-west" if name == "n1" else "local",
            )
            for name, token in tokens.items()
        }
        with running_nodes(procs.values()):
            yield srv, procs


def test_vms_spread_drain_node_failure_and_return(cluster: tuple[ServerProcess, dict[str, NodeProcess]]) -> None:
    srv, procs = cluster
    with srv.client() as c:
        wait_for("both nodes to report", lambda: all(nodes(c)[n]["state"] == "READY" for n in procs))
        listed = nodes(c)
        assert listed["n1"]["capacity"]["memMb"] > 0 and listed["n1"]["address"] == "127.0.0.1"
        assert (listed["n1"]["region"], listed["n2"]["region"]) == ("eu-west", "local"), "the node's own label"
        assert c.post("/v1/nodes", json={"name": "n1"}).status_code == 409
        assert c.post("/v1/nodes", json={"name": "Bad_Name"}).status_code == 400
        assert c.post("/v1/nodes/n1/heartbeat", json={}, headers={"Authorization": "Bearer nope"}).status_code in (
            400,
            403,
        )
        assert c.post("/v1/nodes/local/drain").json()["state"] == "DRAINING"

        vms = [c.post("/v1/vms", json=VM).json() for _ in range(4)]
        assert sorted(v["node"] for v in vms) == ["n1", "n1", "n2", "n2"], "spread over the two nodes"
        for vm in vms:
            assert vm["nodePort"] == procs[vm["node"]].port
            r = c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": f"echo on {vm['node']}"})
            assert r.status_code == 200 and r.json()["stdout"] == f"on {vm['node']}\n"
        assert nodes(c)["n1"]["allocated"] == {"vcpus": 2, "memMb": 512} and nodes(c)["n1"]["vms"] == 2
        token = c.get(f"/v1/vms/{vms[0]['id']}/agentToken").json()
        assert token["url"] == f"ws://127.0.0.1:{procs[vms[0]['node']].port}"

        assert c.post("/v1/nodes/n1/drain").json()["state"] == "DRAINING"
        assert {c.post("/v1/vms", json=VM).json()["node"] for _ in range(2)} == {"n2"}
        assert c.post("/v1/nodes/n1/undrain").json()["state"] == "READY"

        on_n2 = [v["id"] for v in c.get("/v1/vms").json() if v["node"] == "n2"]
        procs["n2"].kill()
        wait_for("n2 to be UNREACHABLE", lambda: nodes(c)["n2"]["state"] == "UNREACHABLE", 15)
        assert {c.get(f"/v1/vms/{v}").json()["state"] for v in on_n2} == {"UNREACHABLE"}
        r = c.post(f"/v1/vms/{on_n2[0]}/exec", json={"cmd": "true"})
        assert r.status_code == 503 and "n2" in r.json()["message"]
        assert c.delete(f"/v1/vms/{on_n2[0]}").status_code == 503, "nothing is deleted behind an absent node"
        new = c.post("/v1/vms", json=VM).json()
        assert new["node"] == "n1", "new VMs avoid the unreachable node"

        procs["n2"].start()
        wait_for("n2 to return", lambda: nodes(c)["n2"]["state"] == "READY", 15)
        wait_for("its VMs to run again", lambda: {c.get(f"/v1/vms/{v}").json()["state"] for v in on_n2} == {"RUNNING"})
        r = c.post(f"/v1/vms/{on_n2[0]}/exec", json={"cmd": "echo back"})
        assert r.status_code == 200 and r.json()["stdout"] == "back\n"

        before = {v["id"]: (v["node"], v["state"]) for v in c.get("/v1/vms").json()}
    srv.stop()
    srv.start()
    with srv.client() as c:
        assert {v["id"]: (v["node"], v["state"]) for v in c.get("/v1/vms").json()} == before
        for vm_id in before:
            assert c.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"}).status_code == 200
            assert c.delete(f"/v1/vms/{vm_id}").status_code == 204

        assert c.delete("/v1/nodes/n2").status_code == 204
        assert "n2" not in nodes(c)


def test_every_vm_operation_reaches_the_vms_node(cluster: tuple[ServerProcess, dict[str, NodeProcess]]) -> None:
    srv, procs = cluster
    with srv.client() as c:
        wait_for("both nodes to report", lambda: all(nodes(c)[n]["state"] == "READY" for n in procs))
        assert c.post("/v1/nodes/local/drain").status_code == 200
        assert c.post("/v1/nodes/n2/drain").status_code == 200
        on_n1 = c.post("/v1/vms", json=VM).json()["id"]
        assert c.post(f"/v1/vms/{on_n1}/pause").status_code == 204
        assert c.get(f"/v1/vms/{on_n1}").json()["state"] == "PAUSED"
        assert c.post(f"/v1/vms/{on_n1}/resume").status_code == 204
        assert c.post(f"/v1/vms/{on_n1}/ports", json={"guestPort": 8080}).status_code == 201
        assert c.delete(f"/v1/vms/{on_n1}/firewall").status_code == 204
        logs = c.get(f"/v1/vms/{on_n1}/logs", params={"type": "firecracker.log"})
        assert logs.status_code == 200 and any("fake boot" in line for line in logs.json()["lines"])
        snap = c.post(f"/v1/vms/{on_n1}/snapshots").json()
        assert c.post("/v1/nodes/n2/undrain").status_code == 200
        fork = c.post(f"/v1/vms/{on_n1}/fork", json={"count": 2}).json()
        assert [v["node"] for v in fork["vms"]] == ["n1", "n1"], "restores go to the snapshot's node"

        assert c.post("/v1/nodes/n1/drain").status_code == 200
        r = c.post("/v1/vms", json={**VM, "snapshotId": snap["id"]})
        assert r.status_code == 503 and "node n1 is DRAINING" in r.json()["message"], r.text
        assert c.post("/v1/nodes/n1/undrain").status_code == 200
        assert c.post("/v1/vms", json={**VM, "snapshotId": snap["id"]}).json()["node"] == "n1"
        for vm in c.get("/v1/vms").json():
            assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204
        for made in c.get("/v1/snapshots").json():
            assert c.delete(f"/v1/snapshots/{made['id']}").status_code == 204

        # a host gone for good: its node is forgotten with its VMs, on request, once UNREACHABLE
        gone = c.post("/v1/vms", json=VM).json()
        assert gone["node"] == "n1"
        r = c.delete("/v1/nodes/n1", params={"force": "true"})
        assert r.status_code == 409 and "UNREACHABLE nodes only" in r.json()["message"]
        procs["n1"].kill()
        wait_for("n1 to be UNREACHABLE", lambda: nodes(c)["n1"]["state"] == "UNREACHABLE", 15)
        assert c.delete("/v1/nodes/n1").status_code == 409
        assert c.delete("/v1/nodes/n1", params={"force": "true"}).status_code == 204
        assert c.get(f"/v1/vms/{gone['id']}").status_code == 404 and "n1" not in nodes(c)


def test_a_node_on_tls(tmp_path: Path) -> None:
    """The node serves its contract and WebSocket endpoints over TLS; the control plane checks its certificate
    with SHEESH_NODE_CA and refuses it without."""
    image_dir = Settings().resolved_image_dir()
    cert = self_signed(["127.0.0.1"], tmp_path / "n1" / "tls").cert
    env = {"SHEESH_VMM": "fake", "SHEESH_NETWORK": "off", "SHEESH_NODE_CA": str(cert)}
    with running_server(tmp_path / "control", image_dir, **env) as srv, srv.client() as c:
        token = c.post("/v1/nodes", json={"name": "n1"}).json()["token"]
        assert c.post("/v1/nodes/local/drain").status_code == 200
        node = NodeProcess(
            tmp_path / "n1",
            image_dir,
            control_url=srv.url,
            name="n1",
            token=token,
            SHEESH_VMM="fake",
            SHEESH_TLS="self-signed",
        )
        with running_nodes([node]):
            wait_for("n1 to report", lambda: nodes(c).get("n1", {}).get("state") == "READY")
            vm = c.post("/v1/vms", json=VM).json()
            assert vm["node"] == "n1"
            r = c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "echo over tls"})
            assert r.status_code == 200 and r.json()["stdout"] == "over tls\n"
            assert c.get(f"/v1/vms/{vm['id']}/agentToken").json()["url"].startswith("wss://127.0.0.1:")
            with pytest.raises(httpx.ConnectError):
                httpx.post(f"{node.url}/node/v1/status", headers={"Authorization": f"Bearer {token}"}, json={})
            assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204
