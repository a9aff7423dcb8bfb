"""/v1/vms/:id/exec, /run-ts, /run-js, the execution history /exec-logs, and the streaming exec WebSocket
/v1/vms/:id/exec/stream (its messages: ``sheesh.execstream``)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, WebSocket
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from sheesh.api import timing
from sheesh.api.deps import (
    OwnedVm,
    OwnedVmId,
    ServicesDep,
    enforce_rate_limit,
    principal_of,
    rate_limited,
)
from sheesh.api.errors import validation_message
from sheesh.api.routers.vms import LIMITED
from sheesh.api.schemas import ExecBody, ExecLogOut, ExecOut, ExecStreamBody, RunJsBody, RunTsBody, RunTsOut
from sheesh.control.services import Services
from sheesh.errors import InvalidInputError, NotFoundError, SheeshError
from sheesh.execstream import ExecStream, StreamRequest
from sheesh.models import ExecKind, ExecRequest, ScriptLanguage, ScriptRequest, Vm
from sheesh.streambridge import refuse, serve_stream

router = APIRouter(prefix="/v1/vms", tags=["exec"], responses=LIMITED)
streams = APIRouter(prefix="/v1/vms")
"""WebSocket routes (authenticated by hand: the REST dependencies take HTTP requests)."""
MAX_EXEC_LOGS = 200
FIRST_MESSAGE_TIMEOUT_S = 30.0


def check_timeout(svc: Services, timeout_ms: int | None) -> None:
    limit = svc.settings.exec_max_timeout_ms
    if timeout_ms is not None and timeout_ms > limit:
        raise InvalidInputError(f"timeoutMs must be <= {limit}")


@router.post(
    "/{vm_id}/exec",
    summary="Run a shell command (bash -lc) as uid/gid 1000",
    dependencies=[Depends(rate_limited("exec"))],
    responses={200: timing.DOC},
)
async def exec_vm(vm: OwnedVm, body: ExecBody, svc: ServicesDep, response: Response) -> ExecOut:
    check_timeout(svc, body.timeout_ms)
    t0 = time.perf_counter()
    result = await svc.execs.exec(vm, ExecRequest(body.cmd, body.cwd, body.env, body.timeout_ms))
    response.headers[timing.HEADER] = timing.server_timing((time.perf_counter() - t0) * 1000, result.timing)
    return ExecOut(
        exitCode=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        timedOut=result.timed_out,
        truncated=result.truncated,
    )


async def _run_script(svc: ServicesDep, vm: Vm, body: RunTsBody | RunJsBody, language: ScriptLanguage) -> JSONResponse:
    check_timeout(svc, body.timeout_ms)
    req = ScriptRequest(
        language=language,
        code=body.code,
        path=body.path,
        args=body.args,
        env=body.env,
        deno_flags=body.deno_flags if isinstance(body, RunTsBody) else [],
        timeout_ms=body.timeout_ms,
        error_stack=body.error_stack,
    )
    t0 = time.perf_counter()
    res = await svc.execs.run_script(vm, req)
    exec_ms = (time.perf_counter() - t0) * 1000
    out: dict[str, Any] = {"exitCode": res.exit_code, "stdout": res.stdout, "stderr": res.stderr}
    if res.has_result:
        out["result"] = res.result
    if res.error is not None:
        out["error"] = res.error
    out.update(timedOut=res.timed_out, truncated=res.truncated)
    return JSONResponse(out, headers={timing.HEADER: timing.server_timing(exec_ms, res.timing)})


@router.post(
    "/{vm_id}/run-ts",
    summary="Run TypeScript with Deno (permissions denied by default)",
    response_model=RunTsOut,
    dependencies=[Depends(rate_limited("run_ts"))],
    responses={200: timing.DOC},
)
async def run_ts(vm: OwnedVm, body: RunTsBody, svc: ServicesDep) -> JSONResponse:
    return await _run_script(svc, vm, body, ScriptLanguage.TS)


@router.post(
    "/{vm_id}/run-js",
    summary="Run JavaScript with Node.js (as uid/gid 1000, an ES module; require() available)",
    response_model=RunTsOut,
    dependencies=[Depends(rate_limited("run_js"))],
    responses={200: timing.DOC},
)
async def run_js(vm: OwnedVm, body: RunJsBody, svc: ServicesDep) -> JSONResponse:
    return await _run_script(svc, vm, body, ScriptLanguage.JS)


@router.get("/{vm_id}/exec-logs", summary="Recent exec, run-ts and run-js calls of a VM, newest first")
async def exec_logs(
    vm_id: OwnedVmId,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_EXEC_LOGS, description="Entries to return (1-200)")] = 50,
    type: Annotated[Literal["all", "exec", "run-ts", "run-js"], Query(description="Which calls")] = "all",
) -> list[ExecLogOut]:
    kind = None if type == "all" else ExecKind(type)
    return [ExecLogOut.of(e) for e in svc.execs.exec_logs(vm_id, kind, limit)]


async def _open_stream(ws: WebSocket, vm_id: str, svc: Services) -> ExecStream:
    principal = principal_of(ws, svc)  # a cookie only from this server's pages (check_cookie_request)
    enforce_rate_limit(ws, svc, "global")
    enforce_rate_limit(ws, svc, "exec")
    if not principal.can_see(svc.vms.get(vm_id).owner_id):
        raise NotFoundError(f"VM {vm_id} not found")
    await ws.accept()
    try:
        first = await asyncio.wait_for(ws.receive(), FIRST_MESSAGE_TIMEOUT_S)
    except TimeoutError:
        raise InvalidInputError(f"no command within {FIRST_MESSAGE_TIMEOUT_S:.0f}s") from None
    if first.get("text") is None:
        raise InvalidInputError("the first message must be the command as a JSON text message")
    try:
        body = ExecStreamBody.model_validate_json(first["text"])
    except ValidationError as exc:
        raise InvalidInputError(validation_message(exc.errors())) from None
    check_timeout(svc, body.timeout_ms)
    req = StreamRequest(
        cmd=body.cmd,
        cwd=body.cwd,
        env=body.env,
        timeout_ms=body.timeout_ms,
        pty=body.pty,
        rows=body.rows,
        cols=body.cols,
    )
    return await svc.execs.exec_stream(vm_id, req)


@streams.websocket("/{vm_id}/exec/stream")
async def exec_stream(websocket: WebSocket, vm_id: str) -> None:
    """Streaming exec: output as it comes, stdin, signals, a terminal (``pty``); see ``sheesh.execstream``."""
    svc: Services = websocket.app.state.services
    try:
        stream = await _open_stream(websocket, vm_id, svc)
    except SheeshError as exc:
        await refuse(websocket, exc)
        return
    await serve_stream(websocket, stream)
