"""/v1/vms: create, list, get, start, stop, destroy, logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, Field, TypeAdapter

from sheesh.api.deps import (
    OwnedVmId,
    PrincipalDep,
    ServicesDep,
    VmListsDep,
    rate_limited,
    require_visible,
    visible_vm,
)
from sheesh.api.schemas import CreateVmBody, ErrorOut, LogsOut, TimeoutBody, VmOut, iso
from sheesh.api.vmlists import CachedList
from sheesh.auth.apikeys import Principal
from sheesh.auth.totp import require_otp
from sheesh.control.services import Services
from sheesh.control.vms import CreateVm
from sheesh.errors import InvalidInputError, NotFoundError
from sheesh.models import Vm

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
VM_LIST = TypeAdapter(list[VmOut])


def vm_out(svc: ServicesDep, vm: Vm) -> VmOut:
    """A VM as the API shows it, with the address of its node's console endpoints."""
    host, port, _ = svc.nodes.endpoint(vm.node)
    return VmOut.of(vm, host, port)


@router.post(
    "",
    status_code=201,
    summary="Create and boot a VM",
    responses=LIMITED,
    dependencies=[Depends(rate_limited("create"))],
)
async def create_vm(body: CreateVmBody, svc: ServicesDep, principal: PrincipalDep) -> VmOut:
    return vm_out(svc, await create_vm_for(svc, principal, body))


async def create_vm_for(svc: Services, principal: Principal, body: CreateVmBody) -> Vm:
    """Create a VM for ``principal`` as ``POST /v1/vms`` does (the web UI's create form too)."""
    if body.snapshot_id is not None and not principal.can_see(svc.vms.snapshot(body.snapshot_id).owner_id):
        raise NotFoundError(f"snapshot {body.snapshot_id} not found")
    return await svc.vms.create(
        CreateVm(
            cpu=body.cpu,
            mem_mb=body.mem_mb,
            allow_ips=body.allow_ips,
            outbound_internet=body.outbound_internet,
            image_id=body.image_id,
            snapshot_id=body.snapshot_id,
            disk_size_mb=body.disk_size_mb,
            owner_id=principal.user_id,
            kind=body.kind,
            timeout_s=body.timeout_s,
            on_timeout=body.on_timeout,
        )
    )


@router.post("/{vm_id}/timeout", summary="Set (or clear) the VM's timeout, counted from now")
async def set_timeout(vm_id: OwnedVmId, body: TimeoutBody, svc: ServicesDep) -> VmOut:
    return vm_out(svc, await svc.vms.set_timeout(vm_id, body.timeout_s, body.on_timeout))


@router.get("", summary="List VMs", response_model=list[VmOut])
async def list_vms(svc: ServicesDep, principal: PrincipalDep, lists: VmListsDep) -> Response:
    # served from the body built last for this viewer while no VM changed since (api.vmlists)
    scope = "*" if principal.is_admin else "user:" + principal.user_id
    version = svc.vms.version()  # before the rows: a body is never older than the version it is kept at
    cached = lists.get(scope, version, svc.nodes.endpoint)
    if cached is None:
        vms = [vm for vm in svc.vms.list_vms() if principal.can_see(vm.owner_id)]
        endpoints = {node: svc.nodes.endpoint(node) for node in {vm.node for vm in vms}}
        outs = [VmOut.of(vm, *endpoints[vm.node][:2]) for vm in vms]
        cached = CachedList(version=version, endpoints=endpoints, body=VM_LIST.dump_json(outs))
        lists.put(scope, cached)
    return Response(cached.body, media_type="application/json")


@router.get("/{vm_id}", summary="Get a VM (with the node host/port of its console endpoints)", response_model=VmOut)
async def get_vm(vm_id: str, svc: ServicesDep, principal: PrincipalDep, lists: VmListsDep) -> Response:
    # as the list: served from the body built last for this VM while no VM changed since (api.vmlists)
    version = svc.vms.version()
    cached = lists.get("vm:" + vm_id, version, svc.nodes.endpoint)
    if cached is None:
        vm = visible_vm(svc, principal, vm_id)
        endpoints = {vm.node: svc.nodes.endpoint(vm.node)}
        body = VmOut.of(vm, *endpoints[vm.node][:2]).model_dump_json().encode()
        cached = CachedList(version=version, endpoints=endpoints, body=body, owner_id=vm.owner_id)
        lists.put("vm:" + vm_id, cached)
    else:
        require_visible(principal, vm_id, cached.owner_id)
    return Response(cached.body, media_type="application/json")


class AgentTokenOut(BaseModel):
    token: str
    expiresAt: str
    url: str = Field(description="Base URL of the node's WebSocket endpoints, e.g. url + '/serial?token=...'")


@router.get("/{vm_id}/agentToken", summary="One-time token for the node's console endpoints (2FA-protected)")
async def agent_token(
    vm_id: OwnedVmId,
    svc: ServicesDep,
    principal: PrincipalDep,
    otp: Annotated[str | None, Query(description="One-time passcode, when 2FA is on")] = None,
    x_otp: Annotated[str | None, Header(alias="X-OTP")] = None,
) -> AgentTokenOut:
    """With 2FA on, an API key needs a current passcode (``otp`` or ``X-OTP``); a login token does not (the
    passcode was checked at login)."""
    return await issue_agent_token(svc, principal, vm_id, otp or x_otp)


async def issue_agent_token(svc: Services, principal: Principal, vm_id: str, otp: str | None) -> AgentTokenOut:
    """A console token; an auto-paused VM is resumed for the console."""
    if not principal.login:
        require_otp(svc.accounts.user(principal.user_id), otp)
    await svc.vms.touch(vm_id)
    node = svc.vms.get(vm_id).node
    ttl = svc.settings.agent_token_ttl_s
    token = svc.nodes.agent_signer(node, svc.sessions).issue(vm_id, "agent", ttl)
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    host, port, tls = svc.nodes.endpoint(node)
    url = f"{'wss' if tls else 'ws'}://{host}:{port}"
    return AgentTokenOut(token=token, expiresAt=iso(expires), url=url)


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


@router.delete("/{vm_id}/cdrom", status_code=204, summary="Eject the ISO of a full VM")
async def eject_cdrom(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    """Full VMs only: take the ISO (from the node's /downloadIso or /uploadIso) out of the CD-ROM drive, live
    if the VM runs; the next start boots the VM's disk."""
    await svc.vms.eject_cdrom(vm_id)
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
    return LogsOut(vmId=vm_id, type=log_type, lines=await svc.vms.logs(vm_id, kind, tail))
