"""A VM's inbound firewall (rerobots style) and port forwards: /v1/vms/:id/firewall, /v1/vms/:id/ports."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from sheesh.api.deps import OwnedVmId, ServicesDep, firewall_source
from sheesh.api.schemas import FirewallOut, FirewallRuleBody, FirewallRuleOut, PortBody, PortOut
from sheesh.models import FirewallRule

router = APIRouter(prefix="/v1/vms", tags=["network"])


def _firewall(vm_id: str, rules: list[FirewallRule]) -> FirewallOut:
    return FirewallOut(vmId=vm_id, rules=[FirewallRuleOut(src=r.src, action=r.action.value) for r in rules])


@router.get("/{vm_id}/firewall", summary="Ordered inbound firewall rules of a VM")
async def get_firewall(vm_id: OwnedVmId, svc: ServicesDep) -> FirewallOut:
    """The first rule whose ``src`` matches an incoming packet decides; packets matching no rule are dropped."""
    return _firewall(vm_id, svc.vms.get(vm_id).firewall)


@router.post("/{vm_id}/firewall", summary="Append an inbound firewall rule")
async def add_firewall_rule(
    vm_id: OwnedVmId, svc: ServicesDep, request: Request, body: FirewallRuleBody | None = None
) -> FirewallOut:
    """``src`` defaults to the address of the caller (/32), ``action`` to ACCEPT: an empty body lets the caller
    in. At most 64 rules."""
    body = body or FirewallRuleBody()
    src = firewall_source(body.src, request)
    return _firewall(vm_id, await svc.vms.add_firewall_rule(vm_id, FirewallRule(src, body.action)))


@router.delete("/{vm_id}/firewall", status_code=204, summary="Remove all inbound firewall rules (drop all)")
async def clear_firewall(vm_id: OwnedVmId, svc: ServicesDep) -> Response:
    await svc.vms.clear_firewall(vm_id)
    return Response(status_code=204)


@router.post("/{vm_id}/ports", status_code=201, summary="Forward a node port to a port of the VM")
async def add_port(vm_id: OwnedVmId, svc: ServicesDep, body: PortBody) -> PortOut:
    """Traffic to the returned ``hostPort`` on the node (``nodeHost``) reaches ``guestPort`` in the VM, subject
    to the VM's firewall. At most 16 per VM; listed in ``GET /v1/vms/:id``."""
    return PortOut.of(await svc.vms.add_port(vm_id, body.guest_port, body.protocol))


@router.delete("/{vm_id}/ports/{host_port}", status_code=204, summary="Remove a port forward")
async def remove_port(vm_id: OwnedVmId, svc: ServicesDep, host_port: int) -> Response:
    await svc.vms.remove_port(vm_id, host_port)
    return Response(status_code=204)
