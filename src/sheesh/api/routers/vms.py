"""/v1/vms: create, list, get, start, stop, destroy, logs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from sheesh.api.deps import OwnedVmId, PrincipalDep, ServicesDep, rate_limited
from sheesh.api.schemas import CreateVmBody, ErrorOut, LogsOut, VmOut
from sheesh.control.vms import CreateVm
from sheesh.errors import InvalidInputError, NotFoundError

ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorOut} for code in (400, 401, 404, 409, 503)}
LIMITED: dict[int | str, dict[str, object]] = {**ERRORS, 429: {"model": ErrorOut}}
LOG_TYPES = {
    "firecracker.log": "serial",
    "firecracker.stdout.log": "stdout",
    "firecracker.stderr.log": "stderr",
    "serial.log": "serial",
    "vmm.stdout.log": "stdout",
    "vmm.stderr.log": "stderr",
}
router = APIRouter(prefix="/v1/vms", tags=["vms"], responses=ERRORS)


@router.post(
    "",
    status_code=201,
    summary="Create and boot a VM",
    responses=LIMITED,
    dependencies=[Depends(rate_limited("create"))],
)
async def create_vm(body: CreateVmBody, svc: ServicesDep, principal: PrincipalDep) -> VmOut:
    if body.snapshot_id is not None and not principal.can_see(svc.vms.snapshot(body.snapshot_id).owner_id):
        raise NotFoundError(f"snapshot {body.snapshot_id} not found")
    vm = await svc.vms.create(
        CreateVm(
            cpu=body.cpu,
            mem_mb=body.mem_mb,
            allow_ips=body.allow_ips,
            outbound_internet=body.outbound_internet,
            image_id=body.image_id,
            snapshot_id=body.snapshot_id,
            disk_size_mb=body.disk_size_mb,
            owner_id=principal.user_id,
        )
    )
    return VmOut.of(vm)


@router.get("", summary="List VMs")
async def list_vms(svc: ServicesDep, principal: PrincipalDep) -> list[VmOut]:
    return [VmOut.of(vm) for vm in svc.vms.list_vms() if principal.can_see(vm.owner_id)]


@router.get("/{vm_id}", summary="Get a VM")
async def get_vm(vm_id: OwnedVmId, svc: ServicesDep) -> VmOut:
    return VmOut.of(svc.vms.get(vm_id))


@router.post("/{vm_id}/start", status_code=204, summary="Start a stopped VM")
async def start_vm(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    await svc.vms.start(vm_id)
    return Response(status_code=204)


@router.post("/{vm_id}/stop", status_code=204, summary="ACPI shutdown of the VM")
async def stop_vm(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    await svc.vms.stop(vm_id)
    return Response(status_code=204)


@router.delete("/{vm_id}", status_code=204, summary="Destroy the VM: process, network and storage")
async def delete_vm(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    await svc.vms.delete(vm_id)
    return Response(status_code=204)


@router.get("/{vm_id}/logs", summary="Tail of a VM log file")
async def vm_logs(
    vm_id: OwnedVmId,
    svc: ServicesDep,
    log_type: Annotated[str, Query(alias="type", description="Log file: " + ", ".join(LOG_TYPES))] = "firecracker.log",
    tail: Annotated[int, Query(ge=1, le=1000, description="Number of lines (max 1000)")] = 100,
) -> LogsOut:
    kind = LOG_TYPES.get(log_type)
    if kind is None:
        raise InvalidInputError(f"type must be one of {', '.join(LOG_TYPES)}")
    return LogsOut(vmId=vm_id, type=log_type, lines=svc.vms.logs(vm_id, kind, tail))
