"""Auto-pause on a real VM: with SHEESH_AUTO_PAUSE_S an unused VM's QEMU stops using CPU (its vCPUs are
stopped), the next exec resumes it and sees the files and processes it left, and the VM is paused again after."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sheesh.image.built import BuiltImage
from tests.server import ServerProcess, running_server, wait_for

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def pausing_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("autopause") / "data"
    env = {"SHEESH_AUTO_PAUSE_S": "3", "SHEESH_RECONCILE_INTERVAL_S": "0.5"}
    with running_server(data, guest_image.path.parent.parent, **env) as srv:
        yield srv


def _state(c: httpx.Client, vm_id: str) -> str:
    return str(c.get(f"/v1/vms/{vm_id}").json()["state"])


def _qemu_cpu_s(data_dir: Path, vm_id: str) -> float:
    pid = int((data_dir / "vms" / vm_id / "qemu.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def test_unused_vm_pauses_and_the_next_exec_resumes_it(pausing_server: ServerProcess) -> None:
    with pausing_server.client(timeout=300) as c:
        r = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []})
        assert r.status_code == 201, r.text
        vm = r.json()["id"]
        try:
            out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "echo kept > /tmp/k; (sleep 1000 &) ; echo ok"})
            assert out.json()["stdout"] == "ok\n", out.text
            wait_for("the VM to be auto-paused", lambda: _state(c, vm) == "PAUSED", timeout_s=60)
            before = _qemu_cpu_s(pausing_server.data_dir, vm)
            time.sleep(3)
            assert _qemu_cpu_s(pausing_server.data_dir, vm) - before < 0.3  # vCPUs stopped: a few ticks at most
            out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "cat /tmp/k; pgrep -c -x sleep; date +%s"})
            assert out.status_code == 200 and out.json()["stdout"].startswith("kept\n1\n"), out.text
            guest_now = int(out.json()["stdout"].split()[-1])
            assert abs(guest_now - time.time()) < 2, "the guest's clock was not set when it was resumed"
            assert _state(c, vm) == "RUNNING"
            wait_for("the VM to be auto-paused again", lambda: _state(c, vm) == "PAUSED", timeout_s=60)
            assert c.post(f"/v1/vms/{vm}/pause").status_code == 409  # already paused
            assert c.post(f"/v1/vms/{vm}/resume").status_code == 204  # an explicit resume works too
            assert _state(c, vm) == "RUNNING"
        finally:
            c.delete(f"/v1/vms/{vm}")
