"""Request dependencies: services from app state, API-key authentication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from sheesh.auth.apikeys import hash_key
from sheesh.control.services import Services
from sheesh.errors import RateLimitedError

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def rate_limited(bucket: str) -> Callable[..., None]:
    """Dependency enforcing ``settings.rate_limits[bucket]`` per minute per API key (or client address)."""

    def check(request: Request, svc: ServicesDep, key: Annotated[str | None, Depends(api_key_header)]) -> None:
        limit = svc.settings.rate_limits.get(bucket)
        if not limit:
            return
        identity = "key:" + hash_key(key) if key else "ip:" + (request.client.host if request.client else "?")
        decision = svc.limiter.hit(bucket, identity, limit)
        if not decision.allowed:
            raise RateLimitedError(
                f"rate limit exceeded: {limit} requests per minute; retry in {decision.retry_after_s}s",
                decision.retry_after_s,
            )

    return check


def require_api_key(svc: ServicesDep, key: Annotated[str | None, Depends(api_key_header)]) -> None:
    if not svc.auth.verify(key):
        raise HTTPException(status_code=401, detail="missing or invalid API key")
