"""Admin management of the rerobots surface's workspace types (/v1/workspace-types) and deployments
(/v1/deployments). Everyone may read; only admins change them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from sheesh.api.deps import AdminDep, PrincipalDep, ServicesDep
from sheesh.api.routers.vms import ERRORS
from sheesh.api.schemas import Body, ErrorOut, iso
from sheesh.workspaces import Deployment, WorkspaceType

router = APIRouter(tags=["workspaces"], responses={**ERRORS, 403: {"model": ErrorOut}})


class WorkspaceTypeBody(Body):
    cpu: Annotated[StrictInt, Field(ge=1, le=8)]
    mem_mb: Annotated[StrictInt, Field(alias="memMb", ge=128, le=8192)]
    image_id: Annotated[StrictStr | None, Field(alias="imageId", max_length=64)] = None
    disk_size_mb: Annotated[StrictInt | None, Field(alias="diskSizeMb", ge=256)] = None
    vpn: StrictBool = True
    outbound_internet: Annotated[StrictBool, Field(alias="outboundInternet")] = True


class NewWorkspaceTypeBody(WorkspaceTypeBody):
    name: Annotated[StrictStr, Field(max_length=63, description="a-z, 0-9 and _, starting with a letter")]


class WorkspaceTypeOut(BaseModel):
    name: str
    cpu: int
    memMb: int
    imageId: str | None
    diskSizeMb: int | None
    vpn: bool
    outboundInternet: bool
    createdAt: str

    @classmethod
    def of(cls, t: WorkspaceType) -> WorkspaceTypeOut:
        return cls(
            name=t.id,
            cpu=t.cpu,
            memMb=t.mem_mb,
            imageId=t.image_id,
            diskSizeMb=t.disk_size_mb,
            vpn=t.vpn,
            outboundInternet=t.outbound_internet,
            createdAt=iso(t.created_at),
        )


def _wtype(name: str, body: WorkspaceTypeBody) -> WorkspaceType:
    return WorkspaceType(
        id=name,
        cpu=body.cpu,
        mem_mb=body.mem_mb,
        image_id=body.image_id,
        disk_size_mb=body.disk_size_mb,
        vpn=body.vpn,
        outbound_internet=body.outbound_internet,
        created_at=datetime.now(UTC),
    )


@router.get("/v1/workspace-types", summary="Workspace types (rerobots presets)")
async def list_types(_: PrincipalDep, svc: ServicesDep) -> list[WorkspaceTypeOut]:
    return [WorkspaceTypeOut.of(t) for t in svc.workspaces.list_types()]


@router.post("/v1/workspace-types", status_code=201, summary="Add a workspace type (admin)")
async def create_type(body: NewWorkspaceTypeBody, _: AdminDep, svc: ServicesDep) -> WorkspaceTypeOut:
    return WorkspaceTypeOut.of(svc.workspaces.create_type(_wtype(body.name, body)))


@router.get("/v1/workspace-types/{name}", summary="One workspace type")
async def get_type(name: str, _: PrincipalDep, svc: ServicesDep) -> WorkspaceTypeOut:
    return WorkspaceTypeOut.of(svc.workspaces.get_type(name))


@router.put("/v1/workspace-types/{name}", summary="Change a workspace type (admin; running instances keep theirs)")
async def update_type(name: str, body: WorkspaceTypeBody, _: AdminDep, svc: ServicesDep) -> WorkspaceTypeOut:
    return WorkspaceTypeOut.of(svc.workspaces.update_type(_wtype(name, body)))


@router.delete("/v1/workspace-types/{name}", status_code=204, summary="Delete a workspace type without deployments")
async def delete_type(name: str, _: AdminDep, svc: ServicesDep) -> Response:
    svc.workspaces.delete_type(name)
    return Response(status_code=204)


class DeploymentBody(Body):
    type: Annotated[StrictStr, Field(max_length=63)]
    region: Annotated[StrictStr | None, Field(max_length=64)] = None


class AdminDeploymentOut(BaseModel):
    id: str
    type: str
    region: str
    node: str
    icounter: int
    createdAt: str
    queuelen: int
    instance: str | None = Field(description="The instance using it now")

    @classmethod
    def of(cls, dep: Deployment, queuelen: int, instance: str | None) -> AdminDeploymentOut:
        return cls(
            id=dep.id,
            type=dep.type,
            region=dep.region,
            node=dep.node,
            icounter=dep.icounter,
            createdAt=iso(dep.created_at),
            queuelen=queuelen,
            instance=instance,
        )


@router.get("/v1/deployments", summary="Deployments (slots of workspace types)")
async def list_deployments(_: PrincipalDep, svc: ServicesDep) -> list[AdminDeploymentOut]:
    ws = svc.workspaces
    out = []
    for dep in ws.list_deployments():
        occupant = ws.occupant(dep.id)
        out.append(AdminDeploymentOut.of(dep, ws.queuelen(dep), occupant.id if occupant else None))
    return out


@router.post("/v1/deployments", status_code=201, summary="Add a deployment of a workspace type (admin)")
async def create_deployment(body: DeploymentBody, _: AdminDep, svc: ServicesDep) -> AdminDeploymentOut:
    """A new free slot: reservations waiting for its type are served at once."""
    dep = svc.workspaces.add_deployment(body.type, body.region)
    await svc.instances.serve_queue()
    occupant = svc.workspaces.occupant(dep.id)
    return AdminDeploymentOut.of(dep, svc.workspaces.queuelen(dep), occupant.id if occupant else None)


@router.delete("/v1/deployments/{deployment_id}", status_code=204, summary="Delete an unused deployment (admin)")
async def delete_deployment(deployment_id: str, _: AdminDep, svc: ServicesDep) -> Response:
    svc.workspaces.delete_deployment(deployment_id)
    return Response(status_code=204)
