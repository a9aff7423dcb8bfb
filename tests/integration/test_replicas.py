"""Two ``sheesh serve`` replicas on one real PostgreSQL server (started by the tests) and a ``sheesh node``: both
replicas serve the same state and drive the same node, rate limits are shared, and the periodic work runs on
exactly one replica, which hands it over when it stops."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from tests.postgres import Postgres
from tests.server import NodeProcess, ServerProcess, running_nodes, running_server, wait_for

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


def leads(srv: ServerProcess) -> bool:
    with srv.client() as c:
        text = c.get("/metrics").text
    match = re.search(r"^sheesh_leader (\S+)$", text, re.M)
    return match is not None and float(match.group(1)) == 1.0


def test_replicas_share_state_limits_and_one_runs_the_periodic_work(tmp_path: Path, postgres: Postgres) -> None:
    image_dir = Settings().resolved_image_dir()
    ImageBuilder(image_dir).build()
    url = postgres.new_database()
    env = {"SHEESH_VMM": "fake", "SHEESH_DATABASE_URL": url, "SHEESH_RECONCILE_INTERVAL_S": "0.3"}
    limits = json.dumps({"create": 100, "exec": 6})
    env |= {"SHEESH_NODE_TIMEOUT_S": "2", "SHEESH_RATE_LIMITS": limits}
    with (
        running_server(tmp_path / "a", image_dir, SHEESH_NODE_NAME="cp-a", **env) as a,
        running_server(tmp_path / "b", image_dir, SHEESH_NODE_NAME="cp-b", **env) as b,
    ):
        with a.client() as c:
            token = c.post("/v1/nodes", json={"name": "n1"}).json()["token"]
            assert c.post("/v1/nodes/cp-a/drain").status_code == 200
        node = NodeProcess(
            tmp_path / "n1", image_dir, control_url=f"{a.url},{b.url}", name="n1", token=token, SHEESH_VMM="fake"
        )
        with running_nodes([node]):
            with a.client() as ca, b.client() as cb:
                assert cb.post("/v1/nodes/cp-b/drain").status_code == 200
                wait_for(
                    "n1 to report",
                    lambda: any(n["name"] == "n1" and n["state"] == "READY" for n in cb.get("/v1/nodes").json()),
                )
                vm = ca.post("/v1/vms", json=VM).json()
                assert vm["node"] == "n1", vm
                assert cb.get(f"/v1/vms/{vm['id']}").json()["state"] == "RUNNING", "replica b sees a's VM"
                r = cb.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "echo via b"})
                assert r.status_code == 200 and r.json()["stdout"] == "via b\n", "and drives its node"

            # one budget across the replicas: 6 execs a minute, however they are spread
            with a.client() as ca, b.client() as cb:
                codes = [
                    (ca if i % 2 else cb).post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).status_code
                    for i in range(8)
                ]
            assert codes.count(429) == 3 and codes.count(200) == 5, codes  # the exec via b above counted too

            wait_for("a leader", lambda: leads(a) != leads(b))
            leader, other = (a, b) if leads(a) else (b, a)
            node.kill()
            with other.client() as c:
                wait_for(
                    "n1 UNREACHABLE",
                    lambda: any(n["name"] == "n1" and n["state"] == "UNREACHABLE" for n in c.get("/v1/nodes").json()),
                )
            leader.stop()
            wait_for("the other replica to lead", lambda: leads(other), 15)
            node.start()
            with other.client() as c:
                wait_for("n1 back", lambda: c.get(f"/v1/vms/{vm['id']}").json()["state"] == "RUNNING")
                assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204
