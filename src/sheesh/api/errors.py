"""Maps every error to a JSON body ``{"message": ...}`` with the seed's status codes. On the rerobots surface
(routes that mark the request with ``REROBOTS_SURFACE``) the body also has ``error_message``, the key rerobots
clients read, and a 401 says ``wrong authorization token`` as rerobots does. On the karma.run surface the body
is written with the request's ``X-Karma-Codec`` (json or msgpack)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sheesh.api.karma import KARMA_SURFACE, codec_of
from sheesh.errors import (
    RateLimitedError,
    SheeshError,
)

log = logging.getLogger(__name__)


def status_for(exc: SheeshError) -> int:
    return exc.status_code


REROBOTS_SURFACE = "rerobots"
WRONG_TOKEN = "wrong authorization token"


def error(status: int, message: str, headers: dict[str, str] | None = None, request: Request | None = None) -> Response:
    body: dict[str, object] = {"message": message}
    surface = request.scope.get("state", {}).get("surface") if request is not None else None
    if surface == KARMA_SURFACE and request is not None:
        codec = codec_of(request)
        return Response(codec.encode(body), status_code=status, headers=headers, media_type=codec.media_type)
    if surface == REROBOTS_SURFACE:
        if status == 401:
            body["message"] = message = WRONG_TOKEN
        body["error_message"] = message
        if status == 409:
            body["result_message"] = message
            body["success"] = False
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(errors: Sequence[Any]) -> str:
    """One message for pydantic's validation errors (of a request, or of a model validated by hand)."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        if err.get("type") == "missing" and not loc:
            return "request body is required"
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(SheeshError)
    async def _sheesh(request: Request, exc: SheeshError) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.warning("request failed: %s", exc.message)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, RateLimitedError) else None
        return error(status, exc.message, headers, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error(400, validation_message(exc.errors()), request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error(500, "internal error", request=request)
