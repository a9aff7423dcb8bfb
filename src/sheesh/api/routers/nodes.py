"""Nodes (admins): ``GET /v1/nodes``, drain and undrain, delete (refused while a node holds VMs)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from sheesh.api.deps import AdminDep, ServicesDep
from sheesh.api.routers.vms import ERRORS
from sheesh.api.schemas import ErrorOut, iso
from sheesh.control.nodes import NodeView
from sheesh.models import NodeState

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
        cap = view.status.capacity
        rec = view.record
        return cls(
            name=rec.id,
            region=rec.region,
            address=rec.address,
            state=rec.state.value,
            capacity=CapacityOut(vcpus=cap.vcpus, memMb=cap.mem_mb, diskMb=cap.disk_mb, diskFreeMb=cap.disk_free_mb),
            allocated=AllocatedOut(vcpus=view.allocated_vcpus, memMb=view.allocated_mem_mb),
            vms=view.vms,
            lastHeartbeat=iso(rec.last_heartbeat) if rec.last_heartbeat else None,
        )


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
async def delete_node(name: str, _: AdminDep, svc: ServicesDep) -> Response:
    svc.nodes.delete(name)
    return Response(status_code=204)
