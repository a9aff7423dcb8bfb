"""The UI's VM pages: the live list and create form, and a VM's page (actions, exec box, files, consoles,
firewall and port forwards, logs, recent execs). Each handler validates its form with the REST API's body
schema and calls the same services (and rate-limit buckets) as the REST route it stands for."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from sheesh.api.deps import ServicesDep, enforce_rate_limit, firewall_source, visible_vm
from sheesh.api.routers.execution import check_timeout
from sheesh.api.routers.files import GZIP_TYPES
from sheesh.api.routers.files import download as rest_download
from sheesh.api.routers.vms import LOG_TYPES, create_vm_for, issue_agent_token
from sheesh.api.schemas import CreateVmBody, ExecBody, FirewallRuleBody, PortBody, workspace_path
from sheesh.api.ui.forms import checkbox, form_of, validated_form
from sheesh.api.ui.history import StateHistory, UsageHistory
from sheesh.api.ui.packing import list_archive, pack_files
from sheesh.api.ui.render import redirect, render
from sheesh.api.ui.routing import UiRoute
from sheesh.api.ui.session import SessionDep, UiSession
from sheesh.control.services import Services
from sheesh.errors import InvalidInputError, NotFoundError, PayloadTooLargeError, SheeshError
from sheesh.models import ExecRequest, FirewallRule, Vm

router = APIRouter(prefix="/ui/vms", route_class=UiRoute, include_in_schema=False)
MAX_LISTED = 500


def owned(svc: Services, session: UiSession, vm_id: str) -> Vm:
    """The VM, if the session's user may see it (the REST API's check)."""
    return visible_vm(svc, session.principal, vm_id)


def history(request: Request, session: UiSession) -> StateHistory:
    """The chart's samples of what this session sees: all VMs for admins, a user's own for a user."""
    histories: dict[str, StateHistory] = request.app.state.ui_histories
    key = "*" if session.principal.is_admin else session.principal.user_id
    return histories.setdefault(key, StateHistory())


def visible_vms(svc: Services, session: UiSession) -> list[Vm]:
    return [vm for vm in svc.vms.list_vms() if session.principal.can_see(vm.owner_id)]


@router.get("", response_class=HTMLResponse)
async def vms_page(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    vms = visible_vms(svc, session)
    snapshots = [s for s in svc.vms.list_snapshots() if session.principal.can_see(s.owner_id)]
    images = svc.images.list_images()
    return render(
        request,
        "vms.html",
        session,
        vms=vms,
        images=images,
        snapshots=snapshots,
        chart=history(request, session).chart(vms),
    )


@router.get("/rows", response_class=HTMLResponse)
async def vm_rows(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    vms = visible_vms(svc, session)
    history(request, session).sample(vms)
    return render(request, "_vm_rows.html", session, vms=vms)


@router.get("/chart", response_class=HTMLResponse)
async def chart(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    return render(request, "_chart.html", session, chart=history(request, session).chart(visible_vms(svc, session)))


@router.post("", response_class=HTMLResponse)
async def create(request: Request, session: SessionDep, svc: ServicesDep) -> Response:
    enforce_rate_limit(request, svc, "create")
    form = await form_of(request)
    fields: dict[str, Any] = {
        "cpu": form.get("cpu"),
        "memMb": form.get("memMb"),
        "kind": form.get("kind") or "sandbox",
        "allowIps": [ip.strip() for ip in str(form.get("allowIps") or "").split(",") if ip.strip()],
        "outboundInternet": checkbox(form, "outboundInternet"),
        "imageId": form.get("imageId") or None,
        "snapshotId": form.get("snapshotId") or None,
    }
    body = validated_form(CreateVmBody, fields, ints=("cpu", "memMb"))
    vm = await create_vm_for(svc, session.principal, body)
    return redirect(request, f"/ui/vms/{vm.id}")


@router.get("/{vm_id}", response_class=HTMLResponse)
async def vm_page(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    vm = owned(svc, session, vm_id)
    log_types = sorted(LOG_TYPES, key=lambda t: t != "serial.log")  # the guest's console first
    return render(request, "vm.html", session, vm=vm, log_types=log_types)


@router.get("/{vm_id}/summary", response_class=HTMLResponse)
async def summary(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    return render(request, "_vm_summary.html", session, vm=owned(svc, session, vm_id))


@router.post("/{vm_id}/exec", response_class=HTMLResponse)
async def exec_box(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    owned(svc, session, vm_id)
    enforce_rate_limit(request, svc, "exec")
    form = await form_of(request)
    body = validated_form(ExecBody, {"cmd": form.get("cmd") or "", "cwd": form.get("cwd") or "/workspace"})
    check_timeout(svc, body.timeout_ms)
    result = await svc.execs.exec(vm_id, ExecRequest(body.cmd, body.cwd, body.env, body.timeout_ms))
    response = render(request, "_exec.html", session, result=result)
    response.headers["HX-Trigger"] = "execDone"  # the recent-execs table reloads
    return response


@router.get("/{vm_id}/usage", response_class=HTMLResponse)
async def usage(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    """CPU and memory sparklines from the node's readings of the VM's machine (polled by the VM page)."""
    owned(svc, session, vm_id)
    readings: UsageHistory = request.app.state.ui_usage
    reading = await svc.vms.usage(vm_id)
    readings.forget_stale(time.time())
    return render(request, "_usage.html", session, chart=readings.add(vm_id, reading))


@router.get("/{vm_id}/history", response_class=HTMLResponse)
async def exec_history(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    owned(svc, session, vm_id)
    return render(request, "_history.html", session, logs=svc.execs.exec_logs(vm_id, None, 20))


@router.get("/{vm_id}/logs", response_class=HTMLResponse)
async def logs(
    vm_id: str,
    request: Request,
    session: SessionDep,
    svc: ServicesDep,
    log_type: Annotated[str, Query(alias="type")] = "serial.log",
) -> HTMLResponse:
    owned(svc, session, vm_id)
    kind = LOG_TYPES.get(log_type)
    if kind is None:
        raise InvalidInputError(f"type must be one of {', '.join(LOG_TYPES)}")
    return render(request, "_logs.html", session, lines=await svc.vms.logs(vm_id, kind, 200))


@router.get("/{vm_id}/console", response_class=HTMLResponse)
async def console(
    vm_id: str,
    request: Request,
    session: SessionDep,
    svc: ServicesDep,
    kind: Annotated[str, Query(alias="type", pattern="^(serial|vnc)$")] = "serial",
) -> HTMLResponse:
    """An embedded console page with a fresh one-time agent token (the login already passed 2FA)."""
    vm = owned(svc, session, vm_id)
    if kind == "vnc" and vm.kind.value != "full":
        raise InvalidInputError("VNC is for full VMs")
    grant = await issue_agent_token(svc, session.principal, vm_id, None)
    node = grant.url.split("://", 1)[1]
    return render(request, "_console.html", session, kind=kind, token=grant.token, node=node)


def _dest(value: object) -> str:
    dest = str(value or "/workspace")
    if workspace_path(dest) is None:
        raise InvalidInputError("dest must be /workspace or a directory under it")
    return dest


@router.post("/{vm_id}/files", response_class=HTMLResponse)
async def upload(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    """Plain files are packed into a tar.gz for the user; with ``extract``, each .tar.gz is sent as it is."""
    owned(svc, session, vm_id)
    enforce_rate_limit(request, svc, "upload")
    form = await form_of(request)
    dest = _dest(form.get("dest"))
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
    if not files:
        raise InvalidInputError("choose at least one file")
    limit = svc.settings.upload_max_bytes
    if sum(f.size or 0 for f in files) > limit:
        raise PayloadTooLargeError(f"upload exceeds {limit} bytes")
    if checkbox(form, "extract"):
        for f in files:
            if (f.content_type or "") not in GZIP_TYPES and not (f.filename or "").endswith((".tar.gz", ".tgz")):
                raise InvalidInputError(f"{f.filename} is not a .tar.gz")
            await svc.execs.upload(vm_id, dest, _chunks(f))
    else:
        with pack_files(files) as archive:
            await svc.execs.upload(vm_id, dest, _chunks(archive))
    names = ", ".join(str(f.filename) for f in files)
    return await _listing(request, session, svc, vm_id, dest, message=f"uploaded {names} to {dest}")


async def _chunks(f: Any, size: int = 1 << 20) -> AsyncIterator[bytes]:
    if isinstance(f, UploadFile):
        await f.seek(0)
        while chunk := await f.read(size):
            yield chunk
        return
    while chunk := f.read(size):
        yield chunk


@router.get("/{vm_id}/files", response_class=HTMLResponse)
async def files(
    vm_id: str,
    request: Request,
    session: SessionDep,
    svc: ServicesDep,
    path: Annotated[str, Query()] = "/workspace",
) -> HTMLResponse:
    owned(svc, session, vm_id)
    enforce_rate_limit(request, svc, "download")
    return await _listing(request, session, svc, vm_id, _dest(path))


async def _listing(
    request: Request, session: UiSession, svc: Services, vm_id: str, path: str, *, message: str | None = None
) -> HTMLResponse:
    """The entries of ``path``, read from the same tar.gz stream a download gets."""
    stream = await svc.execs.download(vm_id, path)
    try:
        entries, truncated = await list_archive(stream, MAX_LISTED)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator: releases the VM
    return render(request, "_files.html", session, files=entries, truncated=truncated, message=message)


@router.get("/{vm_id}/files/download")
async def download(
    vm_id: str, session: SessionDep, svc: ServicesDep, request: Request, path: Annotated[str, Query()] = "/workspace"
) -> StreamingResponse:
    vm = owned(svc, session, vm_id)
    enforce_rate_limit(request, svc, "download")
    return await rest_download(vm, svc, path)


@router.post("/{vm_id}/firewall", response_class=HTMLResponse)
async def add_rule(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    owned(svc, session, vm_id)
    form = await form_of(request)
    body = validated_form(FirewallRuleBody, {"src": form.get("src") or None, "action": form.get("action")})
    rule = FirewallRule(firewall_source(body.src, request), body.action)
    return await _network(request, session, svc, vm_id, svc.vms.add_firewall_rule(vm_id, rule))


@router.post("/{vm_id}/firewall/clear", response_class=HTMLResponse)
async def clear_rules(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    owned(svc, session, vm_id)
    return await _network(request, session, svc, vm_id, svc.vms.clear_firewall(vm_id))


@router.post("/{vm_id}/ports", response_class=HTMLResponse)
async def add_port(vm_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    owned(svc, session, vm_id)
    form = await form_of(request)
    body = validated_form(
        PortBody, {"guestPort": form.get("guestPort"), "protocol": form.get("protocol") or "tcp"}, ints=("guestPort",)
    )
    return await _network(request, session, svc, vm_id, svc.vms.add_port(vm_id, body.guest_port, body.protocol))


@router.post("/{vm_id}/ports/{host_port}/delete", response_class=HTMLResponse)
async def remove_port(
    vm_id: str, host_port: int, request: Request, session: SessionDep, svc: ServicesDep
) -> HTMLResponse:
    owned(svc, session, vm_id)
    return await _network(request, session, svc, vm_id, svc.vms.remove_port(vm_id, host_port))


async def _network(request: Request, session: UiSession, svc: Services, vm_id: str, change: Any) -> HTMLResponse:
    """Run the network ``change`` (a coroutine of the VM service), then the firewall and ports panel."""
    error, status = None, 200
    try:
        await change
    except SheeshError as exc:
        error, status = exc.message, exc.status_code
    return render(request, "_network.html", session, status, vm=svc.vms.get(vm_id), error=error)


ACTIONS = ("start", "stop", "pause", "resume", "snapshot", "fork", "delete")


@router.post("/{vm_id}/{action}", response_class=HTMLResponse)
async def act(vm_id: str, action: str, request: Request, session: SessionDep, svc: ServicesDep) -> Response:
    """One of ``ACTIONS``, as its REST route does it; the summary comes back with what happened. (Last in
    the module: the other POST routes of a VM match first.)"""
    if action not in ACTIONS:
        raise NotFoundError(f"no action {action!r}")
    owned(svc, session, vm_id)
    message = f"{action}: done"
    try:
        if action == "delete":
            await svc.vms.delete(vm_id)
            return redirect(request, "/ui/vms")
        if action == "snapshot":
            message = f"snapshot {(await svc.vms.create_snapshot(vm_id)).id} taken"
        elif action == "fork":
            _, forks, failed = await svc.vms.fork(vm_id, 1)
            message = f"forked into {', '.join(v.id for v in forks) or 'nothing'}" + (
                f"; failed: {', '.join(failed)}" if failed else ""
            )
        else:
            await getattr(svc.vms, action)(vm_id)
    except SheeshError as exc:
        vm = svc.vms.get(vm_id)
        return render(request, "_vm_summary.html", session, exc.status_code, vm=vm, error=exc.message)
    return render(request, "_vm_summary.html", session, vm=svc.vms.get(vm_id), message=message)
