"""/v1/vms/:id/exec and /v1/vms/:id/run-ts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from sheesh.api.deps import OwnedVmId, ServicesDep, rate_limited
from sheesh.api.routers.vms import LIMITED
from sheesh.api.schemas import ExecBody, ExecOut, RunTsBody, RunTsOut
from sheesh.errors import InvalidInputError
from sheesh.models import ExecRequest, RunTsRequest

router = APIRouter(prefix="/v1/vms", tags=["exec"], responses=LIMITED)


def _check_timeout(svc: ServicesDep, timeout_ms: int | None) -> None:
    limit = svc.settings.exec_max_timeout_ms
    if timeout_ms is not None and timeout_ms > limit:
        raise InvalidInputError(f"timeoutMs must be <= {limit}")


@router.post(
    "/{vm_id}/exec",
    summary="Run a shell command (bash -lc) as uid/gid 1000",
    dependencies=[Depends(rate_limited("exec"))],
)
async def exec_vm(vm_id: OwnedVmId, body: ExecBody, svc: ServicesDep) -> ExecOut:
    _check_timeout(svc, body.timeout_ms)
    result = await svc.vms.exec(vm_id, ExecRequest(body.cmd, body.cwd, body.env, body.timeout_ms))
    return ExecOut(
        exitCode=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        timedOut=result.timed_out,
        truncated=result.truncated,
    )


@router.post(
    "/{vm_id}/run-ts",
    summary="Run TypeScript with Deno (permissions denied by default)",
    response_model=RunTsOut,
    dependencies=[Depends(rate_limited("run_ts"))],
)
async def run_ts(vm_id: OwnedVmId, body: RunTsBody, svc: ServicesDep) -> JSONResponse:
    _check_timeout(svc, body.timeout_ms)
    res = await svc.vms.run_ts(
        vm_id,
        RunTsRequest(
            code=body.code,
            path=body.path,
            args=body.args,
            env=body.env,
            deno_flags=body.deno_flags,
            timeout_ms=body.timeout_ms,
        ),
    )
    out: dict[str, Any] = {"exitCode": res.exit_code, "stdout": res.stdout, "stderr": res.stderr}
    if res.has_result:
        out["result"] = res.result
    if res.error is not None:
        out["error"] = res.error
    out.update(timedOut=res.timed_out, truncated=res.truncated)
    return JSONResponse(out)
