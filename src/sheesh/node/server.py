"""The node contract over HTTP: the routes ``sheesh node`` serves (beside the public WebSocket endpoints) so that
a control plane on another host can drive this node's ``NodeClient``.

Every route needs ``Authorization: Bearer <node token>`` (the per-node secret the control plane holds too).
``POST /node/v1/<op>`` takes the operation's arguments as a JSON object of wire forms (``CONTRACT_OPS`` says
their types) and answers ``{"result": ...}``; ``PUT /node/v1/upload?vm_id=&dest=&max_expanded=`` streams a
tar.gz in, ``GET /node/v1/download?vm_id=&path=`` streams one out, and the WebSocket ``/node/v1/exec_stream`` runs
a streaming command (first message ``{"vm_id", "req", "output_limit"}``, then ``sheesh.execstream``'s). Failures answer
``{"error": <class>, "message": ...}`` with the status code of the class, which the remote client raises again
(``sheesh.node.contract.error_class``).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from sheesh.errors import ForbiddenError, InvalidInputError, NotFoundError, RateLimitedError, SheeshError
from sheesh.execstream import StreamProtocolError, StreamRequest, parse_json
from sheesh.node.contract import CONTRACT_OPS, CONTRACT_PREFIX, NodeClient, error_name, from_wire, to_wire
from sheesh.streambridge import refuse, serve_stream

log = logging.getLogger(__name__)


def _error(exc: SheeshError) -> JSONResponse:
    body: dict[str, Any] = {"error": error_name(exc), "message": exc.message}
    if isinstance(exc, RateLimitedError):
        body["retryAfterS"] = exc.retry_after_s
    return JSONResponse(body, status_code=exc.status_code)


Handler = Callable[[Request], Awaitable[Response]]


def _authorized(token: str, headers: Any) -> bool:
    given = str(headers.get("authorization", "")).encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


NODE_TOKEN_REQUIRED = "node token required (Authorization: Bearer ...)"


def _guarded(token: str, handler: Handler) -> Handler:
    """``handler`` behind the node token; contract errors become error answers."""

    async def guarded(request: Request) -> Response:
        if not _authorized(token, request.headers):
            return _error(ForbiddenError(NODE_TOKEN_REQUIRED))
        try:
            return await handler(request)
        except SheeshError as exc:
            return _error(exc)

    return guarded


def contract_routes(node: NodeClient, token: str) -> list[BaseRoute]:
    """The node contract of ``node`` as Starlette routes guarded by ``token``."""
    if not token:
        raise ValueError("the node contract needs a token")

    async def call(request: Request) -> Response:
        name = request.path_params["op"]
        op = CONTRACT_OPS.get(name)
        if op is None:
            raise NotFoundError(f"no contract operation {name}")
        try:
            raw = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise InvalidInputError(f"the body is not JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != set(op.args):
            raise InvalidInputError(f"{name} takes the arguments {sorted(op.args)}")
        args = {arg: from_wire(hint, raw[arg]) for arg, hint in op.args.items()}
        result = await getattr(node, name)(**args)
        if isinstance(result, set | frozenset):
            result = sorted(result)
        return JSONResponse({"result": to_wire(result)})

    async def upload(request: Request) -> Response:
        vm_id, dest, max_expanded = _query(request, "vm_id", "dest", "max_expanded")

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                if chunk:
                    yield chunk

        result = await node.upload(vm_id, dest, body(), _int(max_expanded, "max_expanded"))
        return JSONResponse({"result": to_wire(result)})

    async def download(request: Request) -> Response:
        vm_id, path = _query(request, "vm_id", "path")
        stream = await node.download(vm_id, path)
        return StreamingResponse(stream, media_type="application/gzip")

    async def exec_stream(ws: WebSocket) -> None:
        if not _authorized(token, ws.headers):
            await refuse(ws, ForbiddenError(NODE_TOKEN_REQUIRED), error=ForbiddenError.__name__)
            return
        await ws.accept()
        try:
            first = parse_json(await ws.receive_text())
            limit = first.get("output_limit")
            if not isinstance(first.get("vm_id"), str) or not (limit is None or isinstance(limit, int)):
                raise InvalidInputError("exec_stream starts with {vm_id, req, output_limit}")
            req = from_wire(StreamRequest, first.get("req"))
            stream = await node.exec_stream(first["vm_id"], req, limit)
        except StreamProtocolError as exc:
            await refuse(ws, InvalidInputError(str(exc)), error=InvalidInputError.__name__)
            return
        except SheeshError as exc:
            await refuse(ws, exc, error=error_name(exc))
            return
        await serve_stream(ws, stream, error_name=error_name)

    return [
        WebSocketRoute(f"{CONTRACT_PREFIX}/exec_stream", exec_stream),
        Route(f"{CONTRACT_PREFIX}/upload", _guarded(token, upload), methods=["PUT"]),
        Route(f"{CONTRACT_PREFIX}/download", _guarded(token, download), methods=["GET"]),
        Route(f"{CONTRACT_PREFIX}/{{op}}", _guarded(token, call), methods=["POST"]),
    ]


def _query(request: Request, *names: str) -> list[str]:
    missing = [n for n in names if n not in request.query_params]
    if missing:
        raise InvalidInputError(f"query parameters required: {', '.join(missing)}")
    return [request.query_params[n] for n in names]


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"{name} must be an integer") from None
