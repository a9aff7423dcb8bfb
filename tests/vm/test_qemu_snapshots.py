"""Snapshots, restore, clones, templates, pause/resume on real QEMU microVMs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from qemu.qmp import QMPClient

from sheesh.image.builder import BuiltImage
from tests.server import ServerProcess, running_server, wait_for

pytestmark = pytest.mark.vm
SHAPE = {"cpu": 1, "memMb": 256, "allowIps": []}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("snap") / "data"
    with running_server(data, guest_image.path.parent.parent, SHEESH_TEMPLATES="true") as server:
        yield server


def _sh(c: httpx.Client, vm: str, cmd: str) -> str:
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": cmd})
    assert r.status_code == 200, r.text
    out: str = r.json()["stdout"]
    return out


def test_restore_keeps_files_and_processes_and_refreshes_identity(srv: ServerProcess) -> None:
    with srv.client() as c:
        src = c.post("/v1/vms", json=SHAPE).json()["id"]
        _sh(c, src, "echo before > /workspace/state.txt; nohup sleep 9999 >/dev/null 2>&1 & echo started")
        ts = c.post(f"/v1/vms/{src}/run-ts", json={"code": "console.log(1)"})
        assert ts.status_code == 200 and ts.json()["stdout"] == "1\n", ts.text
        wait_for("a warm Deno", lambda: _sh(c, src, "pgrep -f 'runner[.]ts' || true") != "", 120)
        deno_pid = _sh(c, src, "pgrep -f 'runner[.]ts'").strip()
        sleep_pid = _sh(c, src, "pgrep -x sleep").strip()
        r = c.post(f"/v1/vms/{src}/snapshots")
        assert r.status_code == 201, r.text
        snap = r.json()
        assert {"id", "vmId", "createdAt"} <= set(snap) and snap["vmId"] == src
        _sh(c, src, "echo after > /workspace/state.txt")  # the source goes on running after the snapshot

        clones = []
        for _ in range(2):
            r = c.post("/v1/vms", json={**SHAPE, "snapshotId": snap["id"]})
            assert r.status_code == 201, r.text
            assert r.json()["provisionMode"] == "snapshot"
            clones.append(r.json())
        assert len({v["guestIp"] for v in clones} | {c.get(f"/v1/vms/{src}").json()["guestIp"]}) == 3
        streams = set()
        for clone in clones:
            vm = clone["id"]
            assert _sh(c, vm, "cat /workspace/state.txt") == "before\n"
            assert _sh(c, vm, "pgrep -x sleep").strip() == sleep_pid
            guest_now = int(_sh(c, vm, "date +%s"))
            assert abs(guest_now - time.time()) < 5, "guest clock not refreshed after restore"
            streams.add(_sh(c, vm, "head -c 16 /dev/urandom | od -An -tx1; echo $RANDOM $RANDOM"))
        streams.add(_sh(c, src, "head -c 16 /dev/urandom | od -An -tx1; echo $RANDOM $RANDOM"))
        assert len(streams) == 3, "clones share random streams"
        # the warm Deno the snapshot holds serves each copy's first run-ts (no cold start), with random state of
        # the copy's own: Math.random (reseeded in a copy) and crypto
        code = "const r = crypto.getRandomValues(new Uint32Array(2)).join();\n"
        code += "console.log(Deno.pid, Math.random(), Math.random(), crypto.randomUUID(), r);"
        outs = []
        for vm in [src, *(v["id"] for v in clones)]:
            r = c.post(f"/v1/vms/{vm}/run-ts", json={"code": code})
            assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
            outs.append(r.json()["stdout"].split())
        assert [o[0] for o in outs] == [deno_pid] * 3, outs
        for i in range(1, 5):
            assert len({o[i] for o in outs}) == 3, outs
        assert all(0 <= float(o[i]) < 1 for o in outs for i in (1, 2)), outs
        # a restored VM can itself be snapshotted (its RAM is streamed) and restored again
        r = c.post(f"/v1/vms/{clones[0]['id']}/snapshots")
        assert r.status_code == 201, r.text
        again = c.post("/v1/vms", json={**SHAPE, "snapshotId": r.json()["id"]}).json()["id"]
        assert _sh(c, again, "cat /workspace/state.txt") == "before\n"

        assert c.post("/v1/vms", json={**SHAPE, "memMb": 512, "snapshotId": snap["id"]}).status_code == 400
        assert c.delete(f"/v1/snapshots/{snap['id']}").status_code == 409
        for vm in [again, *(v["id"] for v in clones), src]:
            assert c.delete(f"/v1/vms/{vm}").status_code == 204
        assert c.delete(f"/v1/snapshots/{snap['id']}").status_code == 204
        assert not (srv.data_dir / "snapshots" / snap["id"]).exists()


def test_templates_pause_resume_and_fork(srv: ServerProcess) -> None:
    with srv.client() as c:
        shape = {**SHAPE, "memMb": 320}
        first = c.post("/v1/vms", json=shape).json()
        assert first["provisionMode"] == "boot"
        deadline = time.monotonic() + 120
        while True:
            vm = c.post("/v1/vms", json=shape).json()
            if vm["provisionMode"] == "snapshot" or time.monotonic() > deadline:
                break
            c.delete(f"/v1/vms/{vm['id']}")
            time.sleep(2)
        assert vm["provisionMode"] == "snapshot", "no template was built"
        assert _sh(c, vm["id"], "id -u; pwd; ls -A /workspace") == "1000\n/workspace\n"
        assert Path(srv.data_dir / "snapshots").is_dir()

        assert c.post(f"/v1/vms/{vm['id']}/pause").status_code == 204
        assert c.get(f"/v1/vms/{vm['id']}").json()["state"] == "PAUSED"
        assert asyncio.run(_vmm_status(srv, vm["id"])) == "paused", "the vCPUs were not stopped"
        assert c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).status_code == 409
        started = time.monotonic()
        paused_snap = c.post(f"/v1/vms/{vm['id']}/snapshots")
        assert paused_snap.status_code == 201 and time.monotonic() - started < 10
        assert c.get(f"/v1/vms/{vm['id']}").json()["state"] == "PAUSED"
        assert c.post(f"/v1/vms/{vm['id']}/resume").status_code == 204
        assert asyncio.run(_vmm_status(srv, vm["id"])) == "running"
        assert _sh(c, vm["id"], "echo back") == "back\n"

        _sh(c, first["id"], "echo forked > /workspace/f")
        r = c.post(f"/v1/vms/{first['id']}/fork", json={"count": 2})
        assert r.status_code == 201, r.text
        kids = [v["id"] for v in r.json()["vms"]]
        assert len(kids) == 2, r.text
        assert [_sh(c, k, "cat /workspace/f") for k in kids] == ["forked\n", "forked\n"]
        assert len({_sh(c, k, "head -c 16 /dev/urandom | od -An -tx1") for k in kids}) == 2
        for v in [*kids, vm["id"], first["id"]]:
            assert c.delete(f"/v1/vms/{v}").status_code == 204
        assert c.delete(f"/v1/snapshots/{paused_snap.json()['id']}").status_code == 204


async def _vmm_status(srv: ServerProcess, vm_id: str) -> str:
    """QEMU's own run state of the VM (``running``, ``paused``, ...), read over its QMP socket."""
    client = QMPClient("sheesh-test")
    await client.connect(str(srv.data_dir / "vms" / vm_id / "qmp.sock"))
    try:
        status = await client.execute("query-status")
    finally:
        await client.disconnect()
    assert isinstance(status, dict)
    return str(status["status"])


def test_the_first_create_after_a_template_is_built_claims_its_spare(tmp_path: Path, guest_image: BuiltImage) -> None:
    """A template built at start (``SHEESH_TEMPLATE_SHAPES``) gets its warm spare at once: the very first create
    of that shape takes it instead of restoring."""
    env = {"SHEESH_TEMPLATES": "true", "SHEESH_TEMPLATE_SHAPES": "1:256", "SHEESH_WARM_SPARES": "1"}
    with running_server(tmp_path / "data", guest_image.path.parent.parent, **env) as server, server.client() as c:
        wait_for("the template's spare", lambda: "ready in" in server.log.read_text(), 180)
        r = c.post("/v1/vms", json=SHAPE)
        assert r.status_code == 201 and r.json()["provisionMode"] == "snapshot", r.text
        vm = r.json()["id"]
        assert f"{vm}: spare" in server.log.read_text() and "claimed" in server.log.read_text()
        assert _sh(c, vm, "echo hi") == "hi\n"
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
