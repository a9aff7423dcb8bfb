"""rerobots CI on the fake stack with real git: projects, jobs at branches and commits, the CI file, the
outbound policy, logs and exit status."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.cifile import CiFileError, parse_ci_file
from sheesh.models import ExecResult
from tests.fakes import ADMIN, FakeStack, fake_services, user_headers
from tests.gitrepos import commit, make_repo


@pytest.fixture
def ci(tmp_path: Path, settings: Settings) -> Iterator[FakeStack]:
    settings.ci_local_repo_roots = [tmp_path / "repos"]
    svc, node = fake_services(settings)
    with TestClient(create_app(svc)) as client:
        yield FakeStack(client=client, svc=svc, node=node)


def _job(c: TestClient, jid: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        job: dict[str, Any] = c.get(f"/ci/job/{jid}", headers=headers).json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_a_job_runs_the_ci_file_in_a_fresh_vm(ci: FakeStack, tmp_path: Path) -> None:
    c = ci.client
    alice = user_headers(c, "alice")
    repo = tmp_path / "repos" / "app"
    make_repo(repo, {".rerobots.yml": "env: {GREETING: hi}\nscript:\n  - echo $GREETING\n  - make test\n"})
    r = c.post("/ci/new", content=f'{{"repo_url": "file://{repo}", "repo_branch": "main"}}', headers=alice)
    assert r.status_code == 200, r.text
    pid, jid = r.json()["pid"], r.json()["jid"]
    job = _job(c, jid, alice)
    assert job["status"] == "passed" and job["exit_code"] == 0, job["log"]
    assert "$ echo $GREETING\n" in job["log"] and "$ make test\n" in job["log"]
    assert job["started"] >= job["created"] and job["ended"] >= job["started"]
    (vm_id, dest), tarball = next(iter(ci.node.uploads.items()))
    assert dest == "/workspace/repo"
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        names = tar.getnames()
    assert "./.rerobots.yml" in names and "./.git/HEAD" in names, "the checkout with its history"
    assert ci.svc.store.get_vm(vm_id) is None, "the job's VM is deleted"
    assert [call for call in ci.node.calls if call[0] == "exec"] == [("exec", vm_id), ("exec", vm_id)]
    projects = c.get("/ci/projects", headers=alice).json()["projects"]
    assert [(p["id"], p["repo_branch"], p["jobs"]) for p in projects] == [(pid, "main", [jid])]


def test_failing_commands_fail_the_job_and_jobs_pick_commits(ci: FakeStack, tmp_path: Path) -> None:
    c = ci.client
    alice = user_headers(c, "alice")
    repo = tmp_path / "repos" / "app"
    old = make_repo(repo, {".rerobots.yml": "script: [old-step]\n"})
    commit(repo, {".rerobots.yml": "script: [new-step, never-runs]\n"})
    pid = c.post("/ci/new", json={"repo_url": f"file://{repo}"}, headers=alice).json()["pid"]
    ci.node.exec_result = ExecResult(3, "partial output", "boom")
    first = _job(c, c.get(f"/ci/project/{pid}", headers=alice).json()["jobs"][0], alice)
    assert first["status"] == "failed" and first["exit_code"] == 3
    assert "$ new-step" in first["log"] and "boom" in first["log"] and "never-runs" not in first["log"]
    ci.node.exec_result = None
    jid = c.post(f"/ci/project/{pid}/job", content=f'{{"branch": "main", "commit": "{old}"}}', headers=alice).json()
    job = _job(c, jid["jid"], alice)
    assert job["status"] == "passed" and job["ref"] == old and f"checked out {old}" in job["log"]
    assert "$ old-step" in job["log"]


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"README": "no ci here"}, "has no .rerobots.yml"),
        ({".rerobots.yml": "script: [\n"}, "not valid YAML"),
        ({".rerobots.yml": "steps: [make]\n"}, "unknown keys steps"),
        ({".rerobots.yml": "type: nope_vm\nscript: [make]\n"}, "workspace type nope_vm not found"),
    ],
)
def test_jobs_that_cannot_run_end_in_error(ci: FakeStack, tmp_path: Path, files: dict[str, str], error: str) -> None:
    c = ci.client
    repo = tmp_path / "repos" / "app"
    make_repo(repo, files)
    jid = c.post("/ci/new", json={"repo_url": f"file://{repo}"}, headers=ADMIN).json()["jid"]
    job = _job(c, jid, ADMIN)
    assert job["status"] == "error" and error in job["log"], job["log"]
    assert not ci.svc.store.list_vms()


def test_repositories_are_checked_and_private(ci: FakeStack, tmp_path: Path) -> None:
    c = ci.client
    alice, bob = user_headers(c, "alice"), user_headers(c, "bob")
    outside = tmp_path / "elsewhere"
    make_repo(outside, {".rerobots.yml": "script: [make]\n"})
    for body in (
        {"repo_url": f"file://{outside}"},
        {"repo_url": "ssh://host/repo.git"},
        {"repo_url": "https://example.test/r.git", "repo_type": "svn"},
        {"repo_url": "https://example.test/r.git", "repo_branch": "a..b"},
        {"repo_url": "https://example.test/r.git", "surprise": 1},
        {},
    ):
        r = c.post("/ci/new", json=body, headers=alice)
        assert r.status_code == 400 and r.json()["error_message"], body
    jid = c.post("/ci/new", json={"repo_url": "http://127.0.0.1:9/r.git"}, headers=alice).json()["jid"]
    job = _job(c, jid, alice)
    assert job["status"] == "error" and "address sheesh does not send requests to" in job["log"]
    assert c.get(f"/ci/job/{jid}", headers=bob).status_code == 404
    pid = c.get("/ci/projects", headers=alice).json()["projects"][0]["id"]
    assert c.post(f"/ci/project/{pid}/job", json={}, headers=bob).json()["error_message"] == "CI project not found"
    assert c.delete(f"/ci/project/{pid}", headers=alice).json() == {"success": True}
    assert c.get(f"/ci/job/{jid}", headers=alice).status_code == 404


def test_the_ci_file_format() -> None:
    ci = parse_ci_file("type: big_vm\ntimeout: 60\nenv: {A: 1, B: null}\nscript: make\n")
    assert (ci.type, ci.timeout_s, ci.env, ci.script) == ("big_vm", 60.0, {"A": "1", "B": ""}, ["make"])
    for bad in ("[1, 2]", "script: []", "script: [make]\ntimeout: -1", "script: [make]\nenv: {1x: a}", "x"):
        with pytest.raises(CiFileError):
            parse_ci_file(bad)
