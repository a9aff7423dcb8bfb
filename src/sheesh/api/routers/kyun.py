"""Kyun's paths for VMs ("Danbo" services): the VM with the host name of its node, and the one-time token for
the node agent's WebSocket endpoints (/serial, /vnc, /downloadIso, /uploadIso, /cloudInit on port 1337).
``x-auth-token`` carries an API key or a login token; with 2FA on, an API key needs a passcode here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from pydantic import Field

from sheesh.api.deps import OwnedVmId, PrincipalDep, ServicesDep
from sheesh.api.routers.vms import ERRORS, AgentTokenOut, issue_agent_token, vm_out
from sheesh.api.schemas import VmOut

router = APIRouter(prefix="/services/danbo", tags=["kyun"], responses=ERRORS)


class DanboOut(VmOut):
    nodeHostname: str = Field(description="Host name of the VM's node: wss://<nodeHostname>:<nodePort>/vnc?token=")


@router.get("/{vm_id}", summary="A VM (Kyun's Danbo model), with its node's host name")
async def danbo(vm_id: OwnedVmId, svc: ServicesDep) -> DanboOut:
    vm = vm_out(svc, svc.vms.get(vm_id))
    return DanboOut(**vm.model_dump(), nodeHostname=vm.nodeHost or svc.settings.node_host())


@router.get("/{vm_id}/agentToken", summary="One-time token for the node agent's endpoints (2FA-protected)")
async def danbo_agent_token(
    vm_id: OwnedVmId,
    svc: ServicesDep,
    principal: PrincipalDep,
    otp: Annotated[str | None, Query(description="One-time passcode (API keys, when 2FA is on)")] = None,
    x_otp: Annotated[str | None, Header(alias="X-OTP")] = None,
) -> AgentTokenOut:
    return await issue_agent_token(svc, principal, vm_id, otp or x_otp)
