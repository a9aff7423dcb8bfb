"""Global rate limit (every endpoint): ``settings.global_rate_limit`` requests per minute per credential, or
per client address without one. Every response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``
(always below the limit: the current request is counted) and ``X-RateLimit-Reset`` (epoch seconds by which
the window is empty again); past the limit the answer is 429 with ``Retry-After``."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sheesh.auth.ratelimit import RateLimiter

CREDENTIAL_HEADERS = ("x-api-key", "x-auth-token", "authorization", "x-karma-signature")


def identity(scope: Scope) -> str:
    headers = Headers(scope=scope)
    for name in CREDENTIAL_HEADERS:
        if value := headers.get(name):
            return "tok:" + hashlib.sha256(value.removeprefix("Bearer ").encode()).hexdigest()
    cookie = headers.get("cookie", "")
    if "rds_session=" in cookie:
        return "tok:" + hashlib.sha256(cookie.split("rds_session=", 1)[1].split(";")[0].encode()).hexdigest()
    client = scope.get("client")
    return "ip:" + (client[0] if client else "?")


class GlobalRateLimit:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, limit: Callable[[], int]) -> None:
        self.app = app
        self.limiter = limiter
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit()
        if scope["type"] != "http" or limit <= 0:
            await self.app(scope, receive, send)
            return
        decision = self.limiter.hit("global", identity(scope), limit)
        reset = str(math.ceil(time.time() + decision.reset_in_s))
        extra = [
            (b"x-ratelimit-limit", str(limit).encode()),
            (b"x-ratelimit-remaining", str(decision.remaining).encode()),
            (b"x-ratelimit-reset", reset.encode()),
        ]
        if not decision.allowed:
            body = json.dumps(
                {"message": f"rate limit exceeded: {limit} requests per minute; retry in {decision.retry_after_s}s"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(decision.retry_after_s).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: Any, limiter: RateLimiter, limit: Callable[[], int]) -> None:
    app.add_middleware(GlobalRateLimit, limiter=limiter, limit=limit)
