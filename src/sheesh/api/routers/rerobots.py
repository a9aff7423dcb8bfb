"""The rerobots API (seed 001) at its root paths: workspace types, deployments, instances over SSH, firewall,
reservations. (Token revocation, /revoke and /purge, lives with the accounts; VPN and CI in their own
routers.) Listing workspace types and deployments needs no credentials, as on rerobots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from sheesh.api.deps import PrincipalDep, ServicesDep, firewall_source
from sheesh.api.rerobots import int_param, json_body, paginate, rerobots_surface
from sheesh.api.schemas import FirewallRuleBody, iso
from sheesh.control.services import Services
from sheesh.control.workspaces import DeploymentQuery
from sheesh.errors import InvalidInputError, NotFoundError
from sheesh.models import FirewallRule
from sheesh.workspaces import Deployment, Instance, InstanceStatus, Reservation, VpnStatus


class ErrorOut(BaseModel):
    message: str
    error_message: str
    result_message: str | None = None
    success: bool | None = None


ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorOut} for code in (400, 401, 404, 406, 409, 503)}
router = APIRouter(tags=["rerobots"], dependencies=[Depends(rerobots_surface)], responses=ERRORS)

COMMANDS = {
    "GET /": "this summary",
    "GET /workspaces": "workspace types",
    "GET /deployments{/workspace_type}": "deployments (q, maxlen, types, sort_by, page, max_per_page, info)",
    "GET /deployment/:deploymentID": "one deployment",
    "GET /queuelen/:deploymentID": "length of a deployment's use-queue",
    "POST /new/{:workspace_type,:deploymentID}": "new instance (sshkey, vpn, reserve, eurl)",
    "POST /terminate/:instanceID": "end an instance",
    "GET /instances": "your instances (include_terminated, sort_by, page, max_per_page)",
    "GET /instance/:instanceID": "one instance: status, fwd (SSH address and port), hostkeys",
    "GET /firewall/:instanceID": "inbound firewall rules",
    "POST /firewall/:instanceID": "append a rule (src, action)",
    "DELETE /firewall/:instanceID": "remove all rules (drop everything)",
    "GET /vpn/:instanceID": "the instance's VPN",
    "POST /vpn/:instanceID": "credentials (.ovpn) of a new VPN client",
    "GET /reservations": "your reservations",
    "DELETE /reservation/:reservationID": "cancel a reservation",
    "POST /revoke/:SHA256-of-token": "revoke an API token",
    "POST /purge": "delete all your API tokens",
    "POST /ci/new": "new CI project (repo_url, ...)",
    "GET /ci/projects": "your CI projects",
    "POST /ci/project/:pid/job": "run a CI job (branch, ref)",
    "GET /ci/job/:jid": "a CI job: status, log, exit code",
}


class CommandsOut(BaseModel):
    commands: dict[str, str]
    version: int = 1


@router.get(
    "/",
    summary="Summary of the commands of this version of the rerobots API (a browser is sent to the web UI)",
    response_model=CommandsOut,
)
async def commands(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", status_code=303)
    return JSONResponse(CommandsOut(commands=COMMANDS).model_dump())


class WorkspacesOut(BaseModel):
    workspace_types: list[str]


@router.get("/workspaces", summary="Known workspace types")
async def workspaces(svc: ServicesDep) -> WorkspacesOut:
    return WorkspacesOut(workspace_types=[t.id for t in svc.workspaces.list_types()])


class DeploymentInfo(BaseModel):
    type: str
    region: str
    queuelen: int


class DeploymentsOut(BaseModel):
    workspace_deployments: list[str]
    page_count: int
    info: dict[str, DeploymentInfo] | None = None


@dataclass(frozen=True)
class DeploymentsParams:
    q: str | None
    maxlen: str | None
    types: str | None
    sort_by: str
    page: int
    max_per_page: int
    info: str | None


def _deployments(svc: Services, path_type: str | None, p: DeploymentsParams) -> DeploymentsOut:
    wanted = [t for t in (p.types or "").split(",") if t] or ([path_type] if path_type else None)
    if p.maxlen in (None, "", "u"):
        limit = None
    else:
        limit = int_param(p.maxlen, "maxlen", 0)
        if limit < 0:
            raise InvalidInputError('maxlen must be a nonnegative integer or "u"')
    found = svc.workspaces.search(DeploymentQuery(q=p.q, maxlen=limit, types=wanted, sort_by=p.sort_by))
    shown, pages = paginate(found, p.max_per_page, p.page)
    info = None
    if p.info in ("t", "true", "1"):
        info = {d.id: DeploymentInfo(type=d.type, region=d.region, queuelen=qlen) for d, qlen in shown}
    return DeploymentsOut(workspace_deployments=[d.id for d, _ in shown], page_count=pages, info=info)


QParam = Annotated[str | None, Query(max_length=256, description="search in id, type and region")]
MaxLen = Annotated[str | None, Query(description='largest queue length, or "u" (default) for any')]
Types = Annotated[str | None, Query(max_length=4096, description="comma-separated workspace types")]
SortBy = Annotated[
    str, Query(description="inc_wtype (default), dec_wtype, inc_created, dec_created, inc_count, dec_count")
]
Page = Annotated[int, Query(ge=1)]
PerPage = Annotated[int, Query(ge=0, le=10000)]


def deployments_params(
    *,
    q: QParam = None,
    maxlen: MaxLen = None,
    types: Types = None,
    sort_by: SortBy = "inc_wtype",
    page: Page = 1,
    max_per_page: PerPage = 0,
    info: Annotated[str | None, Query(description="t: add info {id: {type, region, queuelen}}")] = None,
) -> DeploymentsParams:
    return DeploymentsParams(q, maxlen, types, sort_by, page, max_per_page, info)


DeploymentsQuery = Annotated[DeploymentsParams, Depends(deployments_params)]


@router.get("/deployments", response_model_exclude_none=True, summary="List deployments")
async def deployments(svc: ServicesDep, params: DeploymentsQuery) -> DeploymentsOut:
    """``info=t`` adds ``info: {id: {type, region, queuelen}}``. Paging as ``GET /instances``."""
    return _deployments(svc, None, params)


@router.get("/deployments/{workspace_type}", response_model_exclude_none=True, summary="List deployments of a type")
async def deployments_of_type(workspace_type: str, svc: ServicesDep, params: DeploymentsQuery) -> DeploymentsOut:
    """``types``, when given, wins over the type in the path."""
    return _deployments(svc, workspace_type, params)


class DeploymentOut(BaseModel):
    id: str
    type: str
    region: str
    icounter: int
    created: str
    queuelen: int

    @classmethod
    def of(cls, dep: Deployment, queuelen: int) -> DeploymentOut:
        return cls(
            id=dep.id,
            type=dep.type,
            region=dep.region,
            icounter=dep.icounter,
            created=iso(dep.created_at),
            queuelen=queuelen,
        )


@router.get("/deployment/{deployment_id}", summary="One deployment")
async def deployment(deployment_id: str, svc: ServicesDep) -> DeploymentOut:
    dep = svc.workspaces.get(deployment_id)
    return DeploymentOut.of(dep, svc.workspaces.queuelen(dep))


class QueueLenOut(BaseModel):
    id: str
    queuelen: int


@router.get("/queuelen/{deployment_id}", summary="Length of a deployment's use-queue")
async def queuelen(deployment_id: str, svc: ServicesDep) -> QueueLenOut:
    """0 when idle and no reservation applies; else 1 + the reservations that apply (an upper bound)."""
    dep = svc.workspaces.get(deployment_id)
    return QueueLenOut(id=dep.id, queuelen=svc.workspaces.queuelen(dep))


class NewInstanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sshkey: Annotated[StrictStr | None, Field(max_length=16384)] = None
    vpn: StrictBool = False
    reserve: StrictBool = False
    eurl: Annotated[StrictStr | None, Field(max_length=2048)] = None
    expire_d: Annotated[StrictInt | None, Field(ge=60, le=30 * 86400)] = Field(
        default=None, description="Seconds after its start at which the instance is terminated"
    )


class NewInstanceOut(BaseModel):
    success: bool
    id: str
    sshkey: str | None = Field(default=None, description="Private key: only when no public key was sent")


NEW_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": NewInstanceBody.model_json_schema()}},
    }
}


@router.post(
    "/new/{target}",
    response_model_exclude_none=True,
    openapi_extra=NEW_BODY,
    summary="New instance of a workspace type or deployment",
)
async def new_instance(target: str, request: Request, principal: PrincipalDep, svc: ServicesDep) -> NewInstanceOut:
    """The body (optional, parsed as JSON whatever the Content-Type) has ``sshkey`` (a public key; without it a
    key pair is made and the private key returned once), ``vpn``, ``reserve`` and ``eurl``. When every
    matching deployment is busy: 409 ``All matching workspace deployments are busy``, or with ``reserve``
    a reservation (``success: false`` and its ``id``; ``eurl`` gets a POST when it turns into an instance)."""
    body = await json_body(request, NewInstanceBody)
    launched = await svc.instances.request(
        principal.user_id,
        target,
        public_key=body.sshkey,
        vpn=body.vpn,
        reserve=body.reserve,
        eurl=body.eurl,
        duration_s=body.expire_d,
    )
    return NewInstanceOut(success=launched.success, id=launched.id, sshkey=launched.private_key)


def owned_instance(instance_id: str, principal: PrincipalDep, svc: ServicesDep) -> Instance:
    inst = svc.instances.get(instance_id)
    if not principal.can_see(inst.owner_id):
        raise NotFoundError("instance not found")
    return inst


OwnedInstance = Annotated[Instance, Depends(owned_instance)]


class Done(BaseModel):
    success: bool = True


@router.post("/terminate/{instance_id}", summary="End an instance")
async def terminate(inst: OwnedInstance, svc: ServicesDep) -> Done:
    await svc.instances.terminate(inst.id)
    return Done()


class InstancesOut(BaseModel):
    workspace_instances: list[str]
    page_count: int


@router.get("/instances", summary="Your instances")
async def instances(
    principal: PrincipalDep,
    svc: ServicesDep,
    request: Request,
    *,
    sort_by: Annotated[str, Query(description="dec_start_date (default) or inc_start_date")] = "dec_start_date",
    page: Page = 1,
    max_per_page: PerPage = 0,
    include_terminated: Annotated[str | None, Query(description="present: include ended instances")] = None,
) -> InstancesOut:
    if sort_by not in ("dec_start_date", "inc_start_date"):
        raise InvalidInputError("sort_by must be dec_start_date or inc_start_date")
    found = svc.instances.list_instances(
        principal.user_id,
        include_terminated="include_terminated" in request.query_params,
        newest_first=sort_by == "dec_start_date",
    )
    shown, pages = paginate(found, max_per_page, page)
    return InstancesOut(workspace_instances=[i.id for i in shown], page_count=pages)


class Fwd(BaseModel):
    ipv4: str
    port: int


class VpnOut(BaseModel):
    status: str
    clients: list[str] | None = None


class InstanceOut(BaseModel):
    id: str
    deployment: str
    type: str
    region: str
    status: str
    starttime: str
    endtime: str | None = None
    fwd: Fwd | None = None
    hostkeys: list[str] = []
    vpn: VpnOut | None = None
    error: str | None = Field(default=None, description="Why the instance ended without being terminated")
    vmId: str | None = Field(default=None, description="The instance's sheesh VM (usable with /v1/vms)")
    expiration: str | None = Field(default=None, description="When it ends by itself (expire_d)")


def _vpn_out(svc: Services, inst: Instance) -> VpnOut:
    if inst.vpn == VpnStatus.NIL:
        return VpnOut(status="nil")
    return VpnOut(status=inst.vpn.value, clients=svc.vpn.client_ids(inst))


@router.get("/instance/{instance_id}", response_model_exclude_none=True, summary="One instance")
async def instance(inst: OwnedInstance, svc: ServicesDep) -> InstanceOut:
    fwd = None
    if inst.ssh_host and inst.ssh_port and inst.status == InstanceStatus.READY:
        fwd = Fwd(ipv4=inst.ssh_host, port=inst.ssh_port)
    return InstanceOut(
        id=inst.id,
        deployment=inst.deployment,
        type=inst.type,
        region=inst.region,
        status=inst.status.value,
        starttime=iso(inst.created_at),
        endtime=iso(inst.ended_at) if inst.ended_at else None,
        fwd=fwd,
        hostkeys=inst.hostkeys,
        vpn=_vpn_out(svc, inst) if inst.vpn != VpnStatus.NIL else None,
        error=inst.error,
        vmId=inst.vm_id if inst.status != InstanceStatus.TERMINATED else None,
        expiration=iso(inst.expires_at) if inst.expires_at else None,
    )


class FirewallOut(BaseModel):
    rules: list[tuple[str, str]] | None = Field(description="(source, action) pairs, first match wins; null: none")


def _rules(rules: list[FirewallRule] | None) -> FirewallOut:
    return FirewallOut(rules=None if rules is None else [(r.src, r.action.value) for r in rules])


@router.get("/firewall/{instance_id}", summary="Inbound firewall rules of an instance")
async def get_firewall(inst: OwnedInstance, svc: ServicesDep) -> FirewallOut:
    return _rules(await svc.instances.firewall(inst))


@router.post(
    "/firewall/{instance_id}",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": FirewallRuleBody.model_json_schema()}},
        }
    },
    summary="Append a firewall rule",
)
async def add_firewall_rule(inst: OwnedInstance, svc: ServicesDep, request: Request) -> FirewallOut:
    """``src`` (IPv4 CIDR) defaults to the caller's address /32, ``action`` (ACCEPT, DROP, REJECT) to ACCEPT:
    an empty body lets the caller in."""
    body = await json_body(request, FirewallRuleBody)
    src = firewall_source(body.src, request)
    vm_id = svc.instances.vm_of(inst)
    return _rules(await svc.vms.add_firewall_rule(vm_id, FirewallRule(src, body.action)))


@router.delete("/firewall/{instance_id}", summary="Remove all firewall rules (everything is dropped)")
async def clear_firewall(inst: OwnedInstance, svc: ServicesDep) -> FirewallOut:
    await svc.vms.clear_firewall(svc.instances.vm_of(inst))
    return FirewallOut(rules=[])


class ReservationOut(BaseModel):
    id: str
    created: str
    desc: str

    @classmethod
    def of(cls, res: Reservation) -> ReservationOut:
        return cls(id=res.id, created=iso(res.created_at), desc=res.desc)


class ReservationsOut(BaseModel):
    reservations: list[ReservationOut]


@router.get("/reservations", summary="Your active reservations")
async def reservations(principal: PrincipalDep, svc: ServicesDep) -> ReservationsOut:
    return ReservationsOut(reservations=[ReservationOut.of(r) for r in svc.instances.reservations(principal.user_id)])


@router.delete("/reservation/{reservation_id}", summary="Cancel a reservation")
async def cancel_reservation(reservation_id: str, principal: PrincipalDep, svc: ServicesDep) -> Done:
    if not principal.can_see(svc.instances.reservation(reservation_id).owner_id):
        raise NotFoundError("reservation not found")
    svc.instances.cancel_reservation(reservation_id)
    return Done()


@router.get("/vpn/{instance_id}", response_model_exclude_none=True, summary="The instance's VPN")
async def vpn(inst: OwnedInstance, svc: ServicesDep) -> VpnOut:
    """``status``: preparing, ready or nil (no VPN); ``clients``: ids of the credentials handed out."""
    return _vpn_out(svc, inst)


class VpnClientOut(BaseModel):
    client_id: str
    ovpn: str = Field(description="An OpenVPN client configuration (with its private key): returned once")


@router.post("/vpn/{instance_id}", summary="Credentials of a new VPN client")
async def new_vpn_client(inst: OwnedInstance, principal: PrincipalDep, svc: ServicesDep) -> VpnClientOut:
    client_id, ovpn = await svc.vpn.new_client(inst, principal.user_id)
    return VpnClientOut(client_id=client_id, ovpn=ovpn)
