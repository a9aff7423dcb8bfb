"""rerobots CI builds (/ci): projects (git repositories) and jobs that run a repository's ``.rerobots.yml``
in a fresh VM. Bodies are JSON, parsed whatever the Content-Type says, like the rest of the rerobots surface."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from sheesh.api.deps import PrincipalDep, ServicesDep
from sheesh.api.rerobots import json_body, rerobots_surface
from sheesh.api.routers.rerobots import ERRORS, Done
from sheesh.api.schemas import iso
from sheesh.errors import NotFoundError
from sheesh.workspaces import CiJob, CiProject

router = APIRouter(prefix="/ci", tags=["rerobots CI"], dependencies=[Depends(rerobots_surface)], responses=ERRORS)

Ref = Annotated[StrictStr | None, Field(max_length=200)]


class NewProjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_url: Annotated[StrictStr, Field(max_length=2048)]
    ns: Annotated[StrictStr | None, Field(max_length=128)] = None
    repo_type: StrictStr = "git"
    repo_branch: Ref = None
    repo_commit: Ref = None


class NewProjectOut(BaseModel):
    pid: str
    jid: str = Field(description="The build started with the project")


def _body(model: type[BaseModel]) -> dict[str, object]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/new", openapi_extra=_body(NewProjectBody), summary="New CI project, and its first build")
async def new_project(request: Request, principal: PrincipalDep, svc: ServicesDep) -> NewProjectOut:
    """``repo_url`` (http, https, git; file:// under the folders an admin allows), ``repo_type`` git, and
    ``repo_branch`` or ``repo_commit`` (default: the default branch). Jobs run the repository's
    ``.rerobots.yml`` (see the API docs)."""
    body = await json_body(request, NewProjectBody)
    project = svc.ci.create_project(
        principal.user_id,
        body.repo_url,
        ns=body.ns,
        repo_type=body.repo_type,
        branch=body.repo_branch,
        commit=body.repo_commit,
    )
    return NewProjectOut(pid=project.id, jid=svc.ci.submit(project).id)


class ProjectOut(BaseModel):
    id: str
    repo_url: str
    repo_type: str
    ns: str | None
    repo_branch: str | None
    repo_commit: str | None
    created: str
    jobs: list[str]

    @classmethod
    def of(cls, p: CiProject, jobs: list[CiJob]) -> ProjectOut:
        return cls(
            id=p.id,
            repo_url=p.repo_url,
            repo_type=p.repo_type,
            ns=p.ns,
            repo_branch=p.branch,
            repo_commit=p.commit,
            created=iso(p.created_at),
            jobs=[j.id for j in jobs],
        )


class ProjectsOut(BaseModel):
    projects: list[ProjectOut]


@router.get("/projects", summary="Your CI projects")
async def projects(principal: PrincipalDep, svc: ServicesDep) -> ProjectsOut:
    return ProjectsOut(projects=[ProjectOut.of(p, svc.ci.jobs(p.id)) for p in svc.ci.projects(principal.user_id)])


def owned_project(pid: str, principal: PrincipalDep, svc: ServicesDep) -> CiProject:
    project = svc.ci.project(pid)
    if not principal.can_see(project.owner_id):
        raise NotFoundError("CI project not found")
    return project


OwnedProject = Annotated[CiProject, Depends(owned_project)]


@router.get("/project/{pid}", summary="One CI project with its jobs (oldest first)")
async def project(p: OwnedProject, svc: ServicesDep) -> ProjectOut:
    return ProjectOut.of(p, svc.ci.jobs(p.id))


@router.delete("/project/{pid}", summary="Delete a CI project and its jobs")
async def delete_project(p: OwnedProject, svc: ServicesDep) -> Done:
    await svc.ci.delete_project(p.id)
    return Done()


class NewJobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    branch: Ref = None
    ref: Ref = None
    commit: Ref = Field(default=None, description="The same as ref (rerobots' Python client sends this)")


class NewJobOut(BaseModel):
    jid: str


@router.post("/project/{pid}/job", openapi_extra=_body(NewJobBody), summary="Run a CI job")
async def new_job(p: OwnedProject, request: Request, svc: ServicesDep) -> NewJobOut:
    """At commit ``ref``, else the tip of ``branch``, else the project's branch or commit."""
    body = await json_body(request, NewJobBody)
    return NewJobOut(jid=svc.ci.submit(p, branch=body.branch, ref=body.ref or body.commit).id)


class JobOut(BaseModel):
    id: str
    pid: str
    status: str = Field(description="queued, running, passed, failed (a command failed) or error (could not run)")
    branch: str | None
    ref: str | None
    exit_code: int | None
    log: str
    created: str
    started: str | None
    ended: str | None


@router.get("/job/{jid}", summary="A CI job: status, log and exit code")
async def job(jid: str, principal: PrincipalDep, svc: ServicesDep) -> JobOut:
    j = svc.ci.job(jid)
    if not principal.can_see(j.owner_id):
        raise NotFoundError("CI job not found")
    return JobOut(
        id=j.id,
        pid=j.project_id,
        status=j.status.value,
        branch=j.branch,
        ref=j.ref,
        exit_code=j.exit_code,
        log=j.log,
        created=iso(j.created_at),
        started=iso(j.started_at) if j.started_at else None,
        ended=iso(j.ended_at) if j.ended_at else None,
    )
