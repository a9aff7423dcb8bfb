"""The karma.run surface beyond /auth: the KVM endpoint ``POST /`` (expressions over sheesh's records,
``control/kvm.py``). Bodies and answers use the ``X-Karma-Codec`` encoding."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sheesh.api.deps import PrincipalDep, ServicesDep
from sheesh.api.karma import Codec, karma_surface, read_body, respond
from sheesh.api.routers.vms import ERRORS
from sheesh.control.kvm import evaluate
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
