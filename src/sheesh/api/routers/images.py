"""/v1/images: guest images (kernel + rootfs), uploads streamed and validated."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, StrictStr

from sheesh.api.deps import AdminDep, ServicesDep
from sheesh.api.routers.vms import ERRORS
from sheesh.api.schemas import Body, ErrorOut, iso
from sheesh.control.images import image_ready
from sheesh.store.rows import StoredImage

router = APIRouter(prefix="/v1/images", tags=["images"], responses={**ERRORS, 413: {"model": ErrorOut}})
BINARY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class CreateImageBody(Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    description: Annotated[StrictStr, Field(max_length=1024)] = ""


class ImageOut(BaseModel):
    id: str
    name: str
    description: str
    isDefault: bool
    ready: bool
    rootfsSizeMb: int
    createdAt: str

    @classmethod
    def of(cls, stored: StoredImage) -> ImageOut:
        img = stored.image
        return cls(
            id=img.id,
            name=img.name,
            description=img.description,
            isDefault=img.is_default,
            ready=image_ready(stored.path),
            rootfsSizeMb=img.rootfs_size_mb,
            createdAt=iso(img.created_at),
        )


@router.get("", summary="List images")
async def list_images(svc: ServicesDep) -> list[ImageOut]:
    return [ImageOut.of(s) for s in svc.images.list_images()]


@router.post("", status_code=201, summary="Create image metadata (then upload kernel and rootfs)")
async def create_image(body: CreateImageBody, svc: ServicesDep, _: AdminDep) -> ImageOut:
    return ImageOut.of(svc.images.create(body.name, body.description))


@router.get("/{image_id}", summary="Get an image")
async def get_image(image_id: str, svc: ServicesDep) -> ImageOut:
    return ImageOut.of(svc.images.get(image_id))


@router.put(
    "/{image_id}/kernel", summary="Upload the kernel (uncompressed x86-64 vmlinux with PVH note)", openapi_extra=BINARY
)
async def put_kernel(image_id: str, request: Request, svc: ServicesDep, _: AdminDep) -> ImageOut:
    return ImageOut.of(await svc.images.upload(image_id, "kernel", request.stream()))


@router.put("/{image_id}/rootfs", summary="Upload the root file system (ext4 image)", openapi_extra=BINARY)
async def put_rootfs(image_id: str, request: Request, svc: ServicesDep, _: AdminDep) -> ImageOut:
    return ImageOut.of(await svc.images.upload(image_id, "rootfs", request.stream()))


@router.post("/{image_id}/set-default", status_code=204, summary="Make this the default image")
async def set_default(image_id: str, svc: ServicesDep, _: AdminDep) -> Response:
    svc.images.set_default(image_id)
    return Response(status_code=204)


@router.delete("/{image_id}", status_code=204, summary="Delete an image (409 while in use or default)")
async def delete_image(image_id: str, svc: ServicesDep, _: AdminDep) -> Response:
    svc.images.delete(image_id)
    return Response(status_code=204)
