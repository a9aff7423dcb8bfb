"""Global rate limit (every endpoint): ``settings.global_rate_limit`` requests per minute per authenticated
user (however the credential is spelled), or per client address without a valid credential. Every response
carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` (always below the limit: the current request is
counted) and ``X-RateLimit-Reset`` (epoch seconds by which the window is empty again); past the limit the
answer is 429 with ``Retry-After``. Node heartbeats and static files are exempt."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sheesh.api.deps import limit_identity
from sheesh.control.services import Services


def _heartbeat(path: str) -> bool:
    """Node heartbeats (node-token authenticated, every few seconds from each node) are not limited."""
    return path.startswith("/v1/nodes/") and path.endswith("/heartbeat") and path.count("/") == 4


def _static(path: str) -> bool:
    """The UI's and the consoles' static files (one page load fetches several) are not limited."""
    return path.startswith(("/ui/static/", "/console/assets/"))


class GlobalRateLimit:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.services
        limit = svc.settings.global_rate_limit
        if scope["type"] != "http" or limit <= 0 or _heartbeat(scope["path"]) or _static(scope["path"]):
            await self.app(scope, receive, send)
            return
        decision = svc.limiter.hit("global", limit_identity(Request(scope), svc), limit)
        reset = str(math.ceil(time.time() + decision.reset_in_s))
        extra = [
            (b"x-ratelimit-limit", str(limit).encode()),
            (b"x-ratelimit-remaining", str(decision.remaining).encode()),
            (b"x-ratelimit-reset", reset.encode()),
        ]
        if not decision.allowed:
            svc.metrics.rate_limited.labels("global").inc()
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


def install(app: Any, services: Services) -> None:
    app.add_middleware(GlobalRateLimit, services=services)
