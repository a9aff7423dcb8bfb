"""Prometheus metrics: the control plane's /metrics (admins) and the node port's /metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sheesh.auth.sessions import SessionSigner, load_or_create_key
from sheesh.node.agent import NodeAgent
from sheesh.node.ws import create_node_app
from sheesh.vmm.fake import FakeDriver
from tests.fakes import ADMIN, FakeStack, user_headers


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_control_plane_metrics(stack: FakeStack) -> None:
    c = stack.client
    stack.svc.settings.rate_limits["create"] = 2
    vms = [c.post("/v1/vms", json={"cpu": 2, "memMb": 512, "allowIps": []}, headers=ADMIN) for _ in range(3)]
    assert [r.status_code for r in vms] == [201, 201, 429]
    c.post(f"/v1/vms/{vms[0].json()['id']}/exec", json={"cmd": "true"}, headers=ADMIN)
    assert c.get("/metrics", headers=user_headers(c, "alice")).status_code == 403
    r = c.get("/metrics", headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = _samples(r.text)
    assert got[("sheesh_vms", (("state", "RUNNING"),))] == 2
    assert got[("sheesh_vms", (("state", "STOPPED"),))] == 0
    assert got[("sheesh_vm_creates_total", (("outcome", "created"),))] == 2
    assert got[("sheesh_vm_create_seconds_count", ())] == 2
    assert got[("sheesh_exec_seconds_count", (("kind", "exec"),))] == 1
    assert got[("sheesh_rate_limited_total", (("bucket", "create"),))] == 1
    assert got[("sheesh_node_vcpus", (("kind", "capacity"), ("node", "fake")))] == 8
    assert got[("sheesh_node_vcpus", (("kind", "allocated"), ("node", "fake")))] == 4
    assert got[("sheesh_node_memory_mb", (("kind", "allocated"), ("node", "fake")))] == 1024


def test_node_metrics(tmp_path: Path) -> None:
    node = NodeAgent(tmp_path / "vms", FakeDriver(), name="n1")
    app = create_node_app(node, SessionSigner(load_or_create_key(tmp_path / "key")))
    with TestClient(app) as c:
        got = _samples(c.get("/metrics").text)
    assert got[("sheesh_node_running_vms", (("node", "n1"),))] == 0
    assert got[("sheesh_node_capacity_vcpus", (("node", "n1"),))] >= 1
    assert got[("sheesh_node_disk_free_mb", (("node", "n1"),))] > 0
