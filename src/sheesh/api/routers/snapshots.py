"""Snapshots (/v1/vms/:id/snapshots, /v1/snapshots) and the VM operations built on them: pause, resume, fork."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sheesh.api.deps import OwnedSnapshotId, OwnedVmId, PrincipalDep, ServicesDep
from sheesh.api.routers.vms import ERRORS, vm_out
from sheesh.api.schemas import ForkBody, ForkOut, SnapshotOut

router = APIRouter(tags=["snapshots"], responses=ERRORS)


@router.post("/v1/vms/{vm_id}/snapshots", status_code=201, summary="Snapshot memory, CPU state and disk")
async def create_snapshot(vm_id: OwnedVmId, svc: ServicesDep) -> SnapshotOut:
    return SnapshotOut.of(await svc.vms.create_snapshot(vm_id))


@router.get("/v1/snapshots", summary="List snapshots")
async def list_snapshots(svc: ServicesDep, principal: PrincipalDep) -> list[SnapshotOut]:
    return [SnapshotOut.of(s) for s in svc.vms.list_snapshots() if principal.can_see(s.owner_id)]


@router.get("/v1/snapshots/{snapshot_id}", summary="Get a snapshot")
async def get_snapshot(snapshot_id: OwnedSnapshotId, svc: ServicesDep) -> SnapshotOut:
    return SnapshotOut.of(svc.vms.snapshot(snapshot_id))


@router.delete("/v1/snapshots/{snapshot_id}", status_code=204, summary="Delete a snapshot (409 while VMs use it)")
async def delete_snapshot(snapshot_id: OwnedSnapshotId, svc: ServicesDep) -> Response:
    await svc.vms.delete_snapshot(snapshot_id)
    return Response(status_code=204)


@router.post("/v1/vms/{vm_id}/pause", status_code=204, summary="Pause the VM's vCPUs")
async def pause_vm(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    await svc.vms.pause(vm_id)
    return Response(status_code=204)


@router.post("/v1/vms/{vm_id}/resume", status_code=204, summary="Resume a paused VM")
async def resume_vm(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    await svc.vms.resume(vm_id)
    return Response(status_code=204)


@router.post("/v1/vms/{vm_id}/fork", status_code=201, summary="Clone a live VM into N new VMs")
async def fork_vm(vm_id: OwnedVmId, svc: ServicesDep, body: ForkBody | None = None) -> ForkOut:
    snap, vms, failed = await svc.vms.fork(vm_id, (body or ForkBody()).count)
    return ForkOut(snapshotId=snap.id, vms=[vm_out(svc, v) for v in vms], failed=failed)
