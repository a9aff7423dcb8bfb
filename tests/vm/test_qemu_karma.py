"""karma.run's admin endpoints on real VMs: export, reset (machines really go), import (records come back,
VMs STOPPED), and a working instance afterwards; the KVM endpoint over the same records."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from sheesh.image.builder import BuiltImage
from tests.server import ServerProcess, running_server

pytestmark = pytest.mark.vm

SECRET = base64.b64encode(b"the first secret, 32 bytes long!").decode()
NEW_SECRET = base64.b64encode(b"and the second one, also 32 B!!!").decode()
KARMA = {"X-Karma-Codec": "json"}


@pytest.fixture(scope="module")
def karma_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("karma") / "data"
    with running_server(data, guest_image.path.parent.parent, SHEESH_INSTANCE_SECRET=SECRET) as srv:
        yield srv


def _sig(srv: ServerProcess, password: str) -> dict[str, str]:
    r = httpx.post(f"{srv.url}/auth", content=json.dumps({"username": "admin", "password": password}), headers=KARMA)
    assert r.status_code == 200, r.text
    return {"X-Karma-Signature": r.json(), **KARMA}


def _qemu_running(srv: ServerProcess) -> bool:
    out = subprocess.run(["pgrep", "-f", str(srv.data_dir / "vms")], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def test_export_reset_import_on_real_vms(karma_server: ServerProcess) -> None:
    srv = karma_server
    admin = _sig(srv, SECRET)
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        made = c.post("/v1/users", json={"username": "alice", "password": "correct horse battery"}, headers=admin)
        assert made.status_code == 201, made.text
        login = c.post("/auth", json={"username": "alice", "password": "correct horse battery"}, headers=KARMA)
        alice = {"X-Karma-Signature": login.json(), **KARMA}
        key = c.post("/v1/api-keys", json={"label": "laptop"}, headers=alice).json()["key"]
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=alice).json()["id"]
        assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "echo hi"}, headers=alice).json()["stdout"] == "hi\n"
        found = c.post("/", content=json.dumps({"all": {"tag": "vms"}}), headers=alice).json()
        assert [v["id"] for v in found] == [vm]

        dump = c.get("/admin/export", headers=admin).json()
        assert c.post("/admin/import", content=json.dumps(dump), headers=admin).status_code == 409
        assert _qemu_running(srv)
        reset = c.post("/admin/reset", content=json.dumps(NEW_SECRET), headers=admin)
        assert reset.status_code == 200, reset.text
        assert not _qemu_running(srv), "the VM's machine is gone"
        assert c.post("/auth", json={"username": "admin", "password": SECRET}, headers=KARMA).status_code == 403
        fresh = {"X-Karma-Signature": reset.json(), **KARMA}
        assert c.get("/v1/vms", headers=fresh).json() == []
        assert c.get("/v1/users/me", headers={"X-API-Key": key}).status_code == 401

        report = c.post("/admin/import", content=json.dumps(dump), headers=_sig(srv, NEW_SECRET)).json()
        assert report["users"] == 1 and report["vms"] == 1, report
        mine = {"X-API-Key": key}
        restored = c.get(f"/v1/vms/{vm}", headers=mine).json()
        assert restored["state"] == "STOPPED" and restored["error"].startswith("restored from a dump")
        assert c.delete(f"/v1/vms/{vm}", headers=mine).status_code == 204
        new_vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=mine).json()["id"]
        assert c.post(f"/v1/vms/{new_vm}/exec", json={"cmd": "id -u"}, headers=mine).json()["stdout"] == "1000\n"
        assert c.delete(f"/v1/vms/{new_vm}", headers=mine).status_code == 204
