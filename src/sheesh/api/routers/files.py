"""/v1/vms/:id/files: tar.gz upload and download, streamed (confined to /workspace in the guest)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from sheesh.api.deps import OwnedVm, ServicesDep, rate_limited
from sheesh.api.routers.vms import LIMITED
from sheesh.api.schemas import workspace_path
from sheesh.errors import InvalidInputError, PayloadTooLargeError

router = APIRouter(prefix="/v1/vms", tags=["files"], responses={**LIMITED, 413: LIMITED[400]})
GZIP_TYPES = {"application/gzip", "application/x-gzip", "application/x-tar+gzip", "application/octet-stream"}


@router.post(
    "/{vm_id}/files/upload",
    status_code=204,
    summary="Upload a tar.gz and extract it under dest",
    dependencies=[Depends(rate_limited("upload"))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                ctype: {"schema": {"type": "string", "format": "binary"}}
                for ctype in ("application/gzip", "application/octet-stream")
            },
        }
    },
)
async def upload(
    vm: OwnedVm,
    request: Request,
    svc: ServicesDep,
    dest: Annotated[str, Query(description="Destination directory under /workspace")],
) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in GZIP_TYPES:
        raise InvalidInputError("Content-Type must be application/gzip (a tar.gz archive)")
    _check_dest(dest)
    limit = svc.settings.upload_max_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"upload exceeds {limit} bytes (compressed)")
    await svc.execs.upload(vm, dest, request.stream())
    return Response(status_code=204)


def _check_dest(path: str) -> None:
    if workspace_path(path) is None:
        raise InvalidInputError("path must be /workspace or a directory under it")


@router.get(
    "/{vm_id}/files/download",
    summary="Download a directory as tar.gz",
    dependencies=[Depends(rate_limited("download"))],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def download(
    vm: OwnedVm,
    svc: ServicesDep,
    path: Annotated[str, Query(description="Directory to download (under /workspace)")],
) -> StreamingResponse:
    _check_dest(path)
    stream = await svc.execs.download(vm, path)
    name = (path.rstrip("/").rsplit("/", 1)[-1] or "workspace") + ".tar.gz"
    return StreamingResponse(
        stream, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
