"""/v1/vms: create, list, get, start, stop, destroy, exec."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sheesh.api.deps import ServicesDep
from sheesh.api.schemas import CreateVmBody, ErrorOut, ExecBody, ExecOut, VmOut
from sheesh.control.vms import CreateVm
from sheesh.errors import InvalidInputError
from sheesh.models import ExecRequest

ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorOut} for code in (400, 401, 404, 409, 429, 503)}
router = APIRouter(prefix="/v1/vms", tags=["vms"], responses=ERRORS)


@router.post("", status_code=201, summary="Create and boot a VM")
async def create_vm(body: CreateVmBody, svc: ServicesDep) -> VmOut:
    vm = await svc.vms.create(
        CreateVm(
            cpu=body.cpu,
            mem_mb=body.mem_mb,
            allow_ips=body.allow_ips,
            outbound_internet=body.outbound_internet,
            image_id=body.image_id,
            snapshot_id=body.snapshot_id,
            disk_size_mb=body.disk_size_mb,
        )
    )
    return VmOut.of(vm)


@router.get("", summary="List VMs")
async def list_vms(svc: ServicesDep) -> list[VmOut]:
    return [VmOut.of(vm) for vm in svc.vms.list()]


@router.get("/{vm_id}", summary="Get a VM")
async def get_vm(vm_id: str, svc: ServicesDep) -> VmOut:
    return VmOut.of(svc.vms.get(vm_id))


@router.post("/{vm_id}/start", status_code=204, summary="Start a stopped VM")
async def start_vm(vm_id: str, svc: ServicesDep) -> Response:
    await svc.vms.start(vm_id)
    return Response(status_code=204)


@router.post("/{vm_id}/stop", status_code=204, summary="ACPI shutdown of the VM")
async def stop_vm(vm_id: str, svc: ServicesDep) -> Response:
    await svc.vms.stop(vm_id)
    return Response(status_code=204)


@router.delete("/{vm_id}", status_code=204, summary="Destroy the VM: process, network and storage")
async def delete_vm(vm_id: str, svc: ServicesDep) -> Response:
    await svc.vms.delete(vm_id)
    return Response(status_code=204)


@router.post("/{vm_id}/exec", summary="Run a shell command as uid/gid 1000")
async def exec_vm(vm_id: str, body: ExecBody, svc: ServicesDep) -> ExecOut:
    limit = svc.settings.exec_max_timeout_ms
    if body.timeout_ms is not None and body.timeout_ms > limit:
        raise InvalidInputError(f"timeoutMs must be <= {limit}")
    result = await svc.vms.exec(vm_id, ExecRequest(body.cmd, body.cwd, body.env, body.timeout_ms))
    return ExecOut(
        exitCode=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        timedOut=result.timed_out,
        truncated=result.truncated,
    )
