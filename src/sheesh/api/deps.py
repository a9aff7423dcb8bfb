"""Request dependencies: services from app state, API-key authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from sheesh.control.services import Services

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def require_api_key(svc: ServicesDep, key: Annotated[str | None, Depends(api_key_header)]) -> None:
    if not svc.auth.verify(key):
        raise HTTPException(status_code=401, detail="missing or invalid API key")
