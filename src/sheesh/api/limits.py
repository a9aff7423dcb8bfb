"""Request body size limit for the JSON endpoints: larger bodies are a 413 before any handler reads them.

Streaming uploads (tar.gz files, image kernels and rootfs) have limits of their own and pass through.
A body announced larger than the limit is read and dropped (up to ``DRAIN_MAX_BYTES``) before the 413 goes
out, so the client sees the answer rather than a connection reset; a body that grows past the limit while
it streams (chunked) ends the request with the same 413.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STREAMED = re.compile(r"^/v1/vms/[^/]+/files/upload$|^/v1/images/[^/]+/(kernel|rootfs)$")
"""Paths whose bodies stream to their own limits."""
DRAIN_MAX_BYTES = 64 * 1024 * 1024


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or STREAMED.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await self._drain(receive, int(length))
            await _too_large(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # an HTTPException passes FastAPI's body parsing unchanged: the error handler makes it JSON
                    raise HTTPException(413, f"request body is larger than {limit} bytes")
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _drain(receive: Receive, length: int) -> None:
        if length > DRAIN_MAX_BYTES:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"message": f"request body is larger than {limit} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
