"""CI builds (rerobots ``/ci``): a project is a git repository; a job checks it out on the control plane's host
at a branch or commit, copies it into a fresh VM of the project's workspace type, runs the commands of its
``.rerobots.yml`` there (``cifile.py``) and keeps the log and exit status; the VM is deleted afterwards.
Jobs run in the background, at most ``ci_max_parallel_jobs`` at a time; the log grows as they go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sheesh.config import Settings
from sheesh.control.cifile import CI_FILE, CiFileError, parse_ci_file
from sheesh.control.execution import ExecService
from sheesh.control.gitrepo import archive, check_ref, check_repo_url, checkout
from sheesh.control.vms import VmService
from sheesh.control.workspaces import DEFAULT_TYPE, WorkspaceService, vm_request
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, SheeshError
from sheesh.models import ExecRequest
from sheesh.store.repo import Store
from sheesh.workspaces import CI_DONE, CiJob, CiJobStatus, CiProject

log = logging.getLogger(__name__)

REPO_DIR = "/workspace/repo"
MAX_LOG_CHARS = 1024 * 1024
MAX_PROJECTS_PER_USER = 100


def _append(job: CiJob, text: str) -> None:
    if text and not text.endswith("\n"):
        text += "\n"
    job.log = (job.log + text)[-MAX_LOG_CHARS:]


@dataclass
class CiService:
    store: Store
    settings: Settings
    vms: VmService
    execs: ExecService
    workspaces: WorkspaceService
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _slots: asyncio.Semaphore | None = None

    # --- projects ----------------------------------------------------------------------------------------
    def create_project(
        self,
        owner_id: str | None,
        repo_url: str,
        *,
        ns: str | None = None,
        repo_type: str = "git",
        branch: str | None = None,
        commit: str | None = None,
    ) -> CiProject:
        if repo_type != "git":
            raise InvalidInputError("repo_type must be git")
        check_repo_url(repo_url, self.settings.ci_local_repo_roots)
        if len(self.projects(owner_id)) >= MAX_PROJECTS_PER_USER:
            raise ConflictError(f"at most {MAX_PROJECTS_PER_USER} CI projects per user")
        project = CiProject(
            id=str(uuid.uuid4()),
            owner_id=owner_id,
            created_at=datetime.now(UTC),
            repo_url=repo_url,
            ns=ns,
            branch=check_ref(branch, "repo_branch"),
            commit=check_ref(commit, "repo_commit"),
            type=DEFAULT_TYPE,
        )
        self.store.add_record(project)
        return project

    def project(self, project_id: str) -> CiProject:
        project = self.store.get_record(CiProject, project_id)
        if project is None:
            raise NotFoundError("CI project not found")
        return project

    def projects(self, owner_id: str | None) -> list[CiProject]:
        return [p for p in self.store.list_records(CiProject) if p.owner_id == owner_id]

    async def delete_project(self, project_id: str) -> None:
        """Delete a project, its jobs and their logs (running jobs are stopped)."""
        self.project(project_id)
        for job in self.jobs(project_id):
            if (task := self._tasks.pop(job.id, None)) is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self.store.delete_record(CiJob, job.id)
        self.store.delete_record(CiProject, project_id)

    # --- jobs --------------------------------------------------------------------------------------------
    def job(self, job_id: str) -> CiJob:
        job = self.store.get_record(CiJob, job_id)
        if job is None:
            raise NotFoundError("CI job not found")
        return job

    def jobs(self, project_id: str) -> list[CiJob]:
        return [j for j in self.store.list_records(CiJob) if j.project_id == project_id]

    def submit(self, project: CiProject, *, branch: str | None = None, ref: str | None = None) -> CiJob:
        """Queue a job at commit ``ref``, else the tip of ``branch``, else the project's own branch/commit."""
        if branch is None and ref is None:
            branch, ref = project.branch, project.commit
        job = CiJob(
            id=str(uuid.uuid4()),
            project_id=project.id,
            owner_id=project.owner_id,
            created_at=datetime.now(UTC),
            branch=check_ref(branch, "branch"),
            ref=check_ref(ref, "ref"),
        )
        self.store.add_record(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job.id))
        return job

    def _save(self, job: CiJob) -> None:
        self.store.save_record(job)

    async def _run(self, job_id: str) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.ci_max_parallel_jobs)
        try:
            async with self._slots:
                job = self.job(job_id)
                job.status, job.started_at = CiJobStatus.RUNNING, datetime.now(UTC)
                self._save(job)
                try:
                    await self._build(job)
                except SheeshError as exc:
                    job.status = CiJobStatus.ERROR
                    _append(job, f"error: {exc.message}")
                job.ended_at = datetime.now(UTC)
                self._save(job)
        finally:
            self._tasks.pop(job_id, None)

    async def _build(self, job: CiJob) -> None:
        project = self.project(job.project_id)
        blocked = self.settings.outbound_blocked()
        work = self.settings.data_dir / "ci"
        work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="job-", dir=work))
        try:
            _append(job, f"$ git clone {project.repo_url}")
            self._save(job)
            sha = await checkout(project.repo_url, tmp / "repo", branch=job.branch, commit=job.ref, blocked=blocked)
            _append(job, f"checked out {sha}" + (f" ({job.branch})" if job.branch and not job.ref else ""))
            spec = tmp / "repo" / CI_FILE
            if not spec.is_file():
                raise CiFileError(f"the repository has no {CI_FILE} at {sha}")
            ci = parse_ci_file(spec.read_text(errors="replace"))
            tarball = await asyncio.to_thread(archive, tmp / "repo", self.settings.upload_max_bytes * 10)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        wtype = self.workspaces.get_type(ci.type or project.type)
        _append(job, f"starting a {wtype.id} VM ({wtype.cpu} vCPU, {wtype.mem_mb} MiB)")
        self._save(job)
        vm = await self.vms.create(vm_request(wtype, project.owner_id))
        try:
            await self.vms.node_of(vm.id).upload(
                vm.id, REPO_DIR, _once(tarball), self.settings.upload_max_expanded_bytes
            )
            await self._script(job, vm.id, ci.script, ci.env, min(ci.timeout_s or 1e9, self.settings.ci_job_timeout_s))
        finally:
            with contextlib.suppress(SheeshError):
                await self.vms.delete(vm.id)

    async def _script(self, job: CiJob, vm_id: str, script: list[str], env: dict[str, str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for cmd in script:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                job.status, job.exit_code = CiJobStatus.FAILED, 124
                _append(job, f"the job's timeout of {timeout_s:.0f} s is over")
                return
            _append(job, f"$ {cmd}")
            self._save(job)
            result = await self.execs.exec(vm_id, ExecRequest(cmd, REPO_DIR, env, left_ms))
            _append(job, result.stdout)
            _append(job, result.stderr)
            if result.timed_out or result.exit_code != 0:
                job.status, job.exit_code = CiJobStatus.FAILED, result.exit_code
                why = "timed out" if result.timed_out else f"exited with {result.exit_code}"
                _append(job, f"the command {why}: the job failed")
                return
        job.status, job.exit_code = CiJobStatus.PASSED, 0
        _append(job, "all commands passed")

    async def recover(self) -> None:
        """After a restart: jobs that were running end with an error; queued ones run."""
        for job in self.store.list_records(CiJob):
            if job.status == CiJobStatus.RUNNING:
                job.status, job.ended_at = CiJobStatus.ERROR, datetime.now(UTC)
                _append(job, "error: the job was interrupted by a restart of the service")
                self._save(job)
            elif job.status not in CI_DONE:
                self._tasks[job.id] = asyncio.create_task(self._run(job.id))

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
