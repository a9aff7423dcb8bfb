"""The karma.run surface beyond /auth: the KVM endpoint ``POST /`` (expressions over sheesh's records,
``control/kvm.py``) and the admin endpoints /admin/export, /admin/import, /admin/reset (``control/dumps.py``).
Bodies and answers use the ``X-Karma-Codec`` encoding."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sheesh.api.deps import PrincipalDep, ServicesDep
from sheesh.api.karma import Codec, karma_surface, read_body, respond
from sheesh.api.routers.vms import ERRORS
from sheesh.auth.apikeys import Principal
from sheesh.control.kvm import evaluate
from sheesh.errors import ForbiddenError, InvalidInputError
from sheesh.wire import to_wire

router = APIRouter(tags=["karma.run"], responses=ERRORS)
KarmaCodec = Annotated[Codec, Depends(karma_surface)]

EXAMPLE = {"all": {"tag": "_tag"}}


@router.post(
    "/",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"example": EXAMPLE}}}},
    summary="KVM endpoint (karma.run): evaluate an expression over your records",
)
async def kvm(request: Request, codec: KarmaCodec, principal: PrincipalDep, svc: ServicesDep) -> Response:
    """The body is a karma.run expression in the ``X-Karma-Codec`` encoding, e.g. ``{"all": {"tag": "vms"}}``;
    the answer is its value. Models: see the API docs. Errors name the path of the failing sub-expression."""
    expr: Any = await read_body(request, codec)
    nodes = [to_wire(await svc.node.status())]
    result = await asyncio.to_thread(evaluate, svc.store, principal.user_id, principal.is_admin, nodes, expr)
    return respond(codec, result)


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ForbiddenError("admin role required")


@router.get("/admin/export", summary="Dump of the whole control-plane state (karma.run admin)")
async def export(codec: KarmaCodec, principal: PrincipalDep, svc: ServicesDep) -> Response:
    """The answer is a string in the codec's encoding: base64 of a gzip'd JSON dump (users with password
    hashes, API key hashes, images and snapshots metadata, VMs, rerobots records; format version 1)."""
    _admin(principal)
    dump = await asyncio.to_thread(svc.dumps.export)
    return respond(codec, base64.b64encode(dump).decode())


@router.get("/admin/import", include_in_schema=False)
async def import_get(codec: KarmaCodec) -> Response:
    return respond(codec, {"message": "POST the dump (what GET /admin/export returned) to /admin/import"}, 405)


@router.post(
    "/admin/import",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "string"}}}}},
    summary="Restore a dump into a freshly reset instance (karma.run admin)",
)
async def import_dump(request: Request, codec: KarmaCodec, principal: PrincipalDep, svc: ServicesDep) -> Response:
    """The body is what ``GET /admin/export`` returned (the codec-encoded base64 string) or the gzip file
    itself. Importing over live data is a 409: reset first. VMs come back STOPPED; the answer counts what was
    restored and notes what was not."""
    _admin(principal)
    raw = await request.body()
    if not raw.startswith(b"\x1f\x8b"):
        text = codec.decode(raw) if raw.strip() else None
        if not isinstance(text, str):
            raise InvalidInputError("the body must be the dump: the string GET /admin/export returned")
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise InvalidInputError("the dump is not base64") from None
    report = await svc.dumps.import_(raw)
    return respond(codec, dataclasses.asdict(report))


@router.post(
    "/admin/reset",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "string"}}}}},
    summary="Destroy everything and start anew with a new instance secret (karma.run admin)",
)
async def reset(request: Request, codec: KarmaCodec, principal: PrincipalDep, svc: ServicesDep) -> Response:
    """The body is the base64 of the new instance secret (at least 16 bytes), in the codec's encoding. Every VM,
    snapshot and user-made image is destroyed and the database wiped; the admin's password becomes the new
    base64 secret. The answer is a new signature for the admin."""
    _admin(principal)
    secret = await read_body(request, codec)
    if not isinstance(secret, str):
        raise InvalidInputError("the body must be a string: the base64 of the new instance secret")
    try:
        decoded = base64.b64decode(secret, validate=True)
    except ValueError:
        raise InvalidInputError("the new secret must be base64") from None
    if len(decoded) < 16:
        raise InvalidInputError("the new secret must be at least 16 bytes")
    admin = await svc.dumps.reset(secret)
    return respond(codec, svc.sessions.issue(admin.id, "signature", svc.settings.signature_ttl_s))
