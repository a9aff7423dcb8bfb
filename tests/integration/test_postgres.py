"""sheesh serve on PostgreSQL (a real server started by the test): migrations, the API's state, a restart."""

from __future__ import annotations

from pathlib import Path

from sheesh.config import Settings
from tests.postgres import Postgres
from tests.server import running_server


def test_serve_keeps_its_state_in_postgresql(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.new_database()
    image_dir = Settings().resolved_image_dir()
    with running_server(tmp_path / "data", image_dir, SHEESH_VMM="fake", SHEESH_DATABASE_URL=url) as srv:
        with srv.client() as c:
            made = c.post("/v1/users", json={"username": "alice", "password": "correct horse battery"})
            assert made.status_code == 201, made.text
            vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()
            assert vm["state"] == "RUNNING", vm
            assert c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "echo pg"}).json()["stdout"] == "pg\n"
            assert c.get("/workspaces").json()["workspace_types"] == ["basic_vm"]
        srv.stop()
        assert not (tmp_path / "data" / "sheesh.db").exists(), "no SQLite database on the side"
        srv.start()
        with srv.client() as c:
            assert [u["username"] for u in c.get("/v1/users").json()] == ["admin", "alice"]
            assert c.get(f"/v1/vms/{vm['id']}").json()["state"] == "RUNNING", "the VM survived the restart"
            assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204
