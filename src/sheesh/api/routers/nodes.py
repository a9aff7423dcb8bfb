"""Nodes: admins list them, add them (``POST /v1/nodes`` gives the token a ``sheesh node`` joins with), drain
and undrain them and delete them (refused while a node holds VMs); nodes report with heartbeats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from sheesh.api.deps import AdminDep, ServicesDep, bearer_token
from sheesh.api.routers.vms import ERRORS
from sheesh.api.schemas import ErrorOut, iso
from sheesh.control.nodes import NodeView
from sheesh.errors import ForbiddenError
from sheesh.models import NodeState
from sheesh.node.contract import NodeStatus, from_wire

router = APIRouter(prefix="/v1/nodes", tags=["nodes"], responses={**ERRORS, 403: {"model": ErrorOut}})


class CapacityOut(BaseModel):
    vcpus: int
    memMb: int
    diskMb: int
    diskFreeMb: int


class AllocatedOut(BaseModel):
    vcpus: int
    memMb: int


class NodeOut(BaseModel):
    name: str
    region: str
    address: str
    state: str
    capacity: CapacityOut
    allocated: AllocatedOut
    vms: int
    lastHeartbeat: str | None

    @classmethod
    def of(cls, view: NodeView) -> NodeOut:
        cap = view.capacity
        rec = view.record
        return cls(
            name=rec.id,
            region=rec.region,
            address=rec.address,
            state=view.state.value,
            capacity=CapacityOut(vcpus=cap.vcpus, memMb=cap.mem_mb, diskMb=cap.disk_mb, diskFreeMb=cap.disk_free_mb),
            allocated=AllocatedOut(vcpus=view.allocated_vcpus, memMb=view.allocated_mem_mb),
            vms=view.vms,
            lastHeartbeat=iso(rec.last_heartbeat) if rec.last_heartbeat else None,
        )


class NodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")
    region: str = Field(default="local", min_length=1, max_length=64)


class NodeAdded(BaseModel):
    name: str
    token: str = Field(description="The node's secret: SHEESH_NODE_TOKEN of its `sheesh node` (shown once)")


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(min_length=1, max_length=255, description="Where the control plane reaches the node")
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    publicHost: str | None = Field(default=None, max_length=255)
    region: str | None = Field(default=None, min_length=1, max_length=64, description="The node's region label")
    status: dict[str, Any] = Field(description="The node's NodeStatus in its wire form (node contract)")


class HeartbeatOut(BaseModel):
    state: str
    heartbeatIntervalS: float


@router.post("", status_code=201, summary="Make a node's record and secret token, for `sheesh node` (admin)")
async def add_node(body: NodeIn, _: AdminDep, svc: ServicesDep) -> NodeAdded:
    rec, token = svc.nodes.add(body.name, body.region)
    return NodeAdded(name=rec.id, token=token)


@router.post(
    "/{name}/heartbeat",
    summary="A node reports its address, capacity and running VMs (node token: Authorization: Bearer)",
)
async def heartbeat(name: str, body: HeartbeatIn, svc: ServicesDep, request: Request) -> HeartbeatOut:
    token = bearer_token(request)
    if token is None:
        raise ForbiddenError("a node token is required (Authorization: Bearer)")
    rec = svc.nodes.authenticate(name, token)
    status = from_wire(NodeStatus, body.status)
    rec = await svc.nodes.heartbeat(
        rec,
        address=body.address,
        port=body.port,
        tls=body.tls,
        public_host=body.publicHost,
        status=status,
        region=body.region,
    )
    return HeartbeatOut(state=rec.state.value, heartbeatIntervalS=svc.settings.heartbeat_interval_s)


@router.get("", summary="Nodes with their state, capacity and allocation (admin)")
async def list_nodes(_: AdminDep, svc: ServicesDep) -> list[NodeOut]:
    return [NodeOut.of(v) for v in await svc.nodes.views()]


async def _one(svc: ServicesDep, name: str) -> NodeOut:
    return next(NodeOut.of(v) for v in await svc.nodes.views() if v.record.id == name)


@router.post("/{name}/drain", summary="Keep a node's VMs but send it no new ones (admin)")
async def drain(name: str, _: AdminDep, svc: ServicesDep) -> NodeOut:
    svc.nodes.set_state(name, NodeState.DRAINING)
    return await _one(svc, name)


@router.post("/{name}/undrain", summary="Let a drained node take new VMs again (admin)")
async def undrain(name: str, _: AdminDep, svc: ServicesDep) -> NodeOut:
    svc.nodes.set_state(name, NodeState.READY)
    return await _one(svc, name)


@router.delete("/{name}", status_code=204, summary="Forget a node that holds no VMs (admin)")
async def delete_node(
    name: str,
    _: AdminDep,
    svc: ServicesDep,
    force: Annotated[
        bool, Query(description="UNREACHABLE nodes only: forget the node with its VMs and snapshots (a dead host)")
    ] = False,
) -> Response:
    svc.nodes.delete(name, force=force)
    return Response(status_code=204)
