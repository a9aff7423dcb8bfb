"""Request dependencies: services from app state, API-key authentication."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import APIKeyHeader
from starlette.requests import HTTPConnection

from sheesh.api.vmlists import VmListCache
from sheesh.auth.apikeys import Principal
from sheesh.auth.sessions import CsrfError
from sheesh.control.services import Services
from sheesh.errors import AuthenticationError, InvalidInputError, NotFoundError, RateLimitedError, SheeshError
from sheesh.models import Vm

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


async def vm_lists(request: Request) -> VmListCache:
    lists: VmListCache = request.app.state.vm_lists
    return lists


VmListsDep = Annotated[VmListCache, Depends(vm_lists)]


def client_ip(request: HTTPConnection) -> str:
    return request.client.host if request.client else "?"


def firewall_source(src: str | None, request: Request) -> str:
    """A firewall rule's source: ``src`` (checked by the body schema), else the caller's IPv4 address as /32."""
    if src is not None:
        return src
    try:
        caller = ipaddress.ip_address(request.client.host) if request.client else None
    except ValueError:
        caller = None
    if not isinstance(caller, ipaddress.IPv4Address):
        raise InvalidInputError("src is required: the request did not come from an IPv4 address")
    return f"{caller}/32"


def resolve_principal(request: HTTPConnection, svc: Services) -> Principal | None:
    """The principal of a request's credentials, or None (none, unknown, expired, tampered); never raises: why
    a signature or cookie failed is kept for ``authenticate``. Resolved once per request (the rate limiter and
    ``authenticate`` share it)."""
    state = request.scope.setdefault("state", {})
    if "principal" in state:
        cached: Principal | None = state["principal"]
        return cached
    principal = svc.auth.principal_for_key(presented_key(request))
    if principal is None:
        # a login token: a karma signature, or the same sent as Kyun's x-auth-token, or the admin UI's cookie
        signature = request.headers.get("x-karma-signature") or _login_token(request.headers.get("x-auth-token"))
        cookie = request.cookies.get(SESSION_COOKIE)
        if signature or cookie:
            kind, token = ("signature", signature) if signature else ("cookie", cookie or "")
            try:
                principal = svc.auth.principal_for_user(svc.sessions.verify(token, kind).user_id)
                if kind == "cookie":
                    check_cookie_request(request, svc, token)
            except SheeshError as exc:
                principal = None
                state["auth_error"] = exc
    state["principal"] = principal
    return principal


def check_cookie_request(conn: HTTPConnection, svc: Services, cookie: str) -> None:
    """A request authenticated by the ``rds_session`` cookie: a state-changing one must send the session's
    CSRF token as ``X-CSRF-Token``; a WebSocket opened by a page must come from a page of this origin.
    SameSite=Strict alone does not stop another site on the same host (a VM's forwarded port) from using it.

    :raise CsrfError: the token is missing or wrong, or the WebSocket's Origin is another one
    """
    if conn.scope["type"] == "websocket":
        origin = conn.headers.get("origin")  # browsers always send it; a program may not
        if origin is not None and urlsplit(origin).netloc != conn.headers.get("host"):
            raise CsrfError("cross-site WebSocket refused: the session cookie works from this server's pages only")
    elif conn.scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
        svc.sessions.check_csrf(cookie, conn.headers.get("x-csrf-token"))


def _login_token(value: str | None) -> str | None:
    """``x-auth-token`` carries an API key or a login token (a signature: ``<base64>.<mac>``)."""
    return value.strip() if value and "." in value else None


def limit_identity(request: HTTPConnection, svc: Services) -> str:
    """Whom rate limits count against: the authenticated user (however the credential was spelled), else
    the client address (no credential, or one that fails authentication)."""
    principal = resolve_principal(request, svc)
    return "user:" + principal.user_id if principal is not None else "ip:" + client_ip(request)


def enforce_rate_limit(conn: HTTPConnection, svc: Services, bucket: str) -> None:
    """Count one request of ``conn`` in ``bucket`` (``global``: ``settings.global_rate_limit``, else
    ``settings.rate_limits[bucket]``) per minute per user (or client address); RateLimitedError beyond."""
    limit = svc.settings.global_rate_limit if bucket == "global" else svc.settings.rate_limits.get(bucket)
    if not limit or limit <= 0:
        return
    decision = svc.limiter.hit(bucket, limit_identity(conn, svc), limit)
    if not decision.allowed:
        svc.metrics.rate_limited.labels(bucket).inc()
        raise RateLimitedError(
            f"rate limit exceeded: {limit} requests per minute; retry in {decision.retry_after_s}s",
            decision.retry_after_s,
        )


def rate_limited(bucket: str) -> Callable[..., Awaitable[None]]:
    """Dependency enforcing ``settings.rate_limits[bucket]`` per minute per user (or client address). Async
    like ``authenticate`` and the global limit: a hit (a dict update in memory; one statement on PostgreSQL or
    Redis) costs less than the hop to a worker thread and back a sync dependency takes (~1 ms of an exec)."""

    async def check(request: Request, svc: ServicesDep) -> None:
        enforce_rate_limit(request, svc, bucket)

    return check


def presented_key(request: HTTPConnection) -> str | None:
    """The API key of a request: ``X-API-Key``, ``x-auth-token`` (Kyun) or ``Authorization: Bearer``
    (rerobots), first match wins."""
    headers = request.headers
    key = (headers.get("x-api-key") or headers.get("x-auth-token") or "").strip()
    return key or bearer_token(request)


def bearer_token(request: HTTPConnection) -> str | None:
    """The token of ``Authorization: Bearer <token>``, if any."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


SESSION_COOKIE = "rds_session"


def set_session_cookie(response: Response, svc: Services, user_id: str) -> None:
    """Log ``user_id`` in on ``response``: a fresh ``rds_session`` (HttpOnly, SameSite=Strict, path /)."""
    ttl = svc.settings.cookie_ttl_s
    token = svc.sessions.issue(user_id, "cookie", ttl)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(ttl), httponly=True, samesite="strict", path="/")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


async def authenticate(
    request: Request, svc: ServicesDep, _: Annotated[str | None, Depends(api_key_header)]
) -> Principal:
    """API key (three header conventions), else ``X-Karma-Signature``, else the ``rds_session`` cookie.
    No credentials or an unknown key: 401. A tampered or expired signature or cookie: 403. Async like the
    handlers: a key is one indexed read, cheaper than a hop to a worker thread and back."""
    principal = principal_of(request, svc)
    request.state.principal = principal
    return principal


def principal_of(conn: HTTPConnection, svc: Services) -> Principal:
    """The authenticated principal of ``conn`` (a request or a WebSocket), as ``authenticate`` checks it.

    :raise AuthenticationError: no credentials, or an unknown key
    :raise ForbiddenError: a tampered or expired signature or cookie
    """
    principal = resolve_principal(conn, svc)
    if principal is None:
        error: SheeshError | None = conn.scope["state"].get("auth_error")
        if error is not None:
            raise error
        raise AuthenticationError("missing or invalid API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="admin role required")
    return principal


def visible_vm(svc: Services, principal: Principal, vm_id: str) -> Vm:
    """The VM, if ``principal`` may act on it (another user's VM is 404, like a missing one)."""
    vm = svc.vms.get(vm_id)
    require_visible(principal, vm_id, vm.owner_id)
    return vm


def require_visible(principal: Principal, vm_id: str, owner_id: str | None) -> None:
    """NotFoundError unless ``principal`` may act on the VM ``vm_id`` that ``owner_id`` owns."""
    if not principal.can_see(owner_id):
        raise NotFoundError(f"VM {vm_id} not found")


async def owned_vm(vm_id: str, principal: PrincipalDep, svc: ServicesDep) -> Vm:
    """The path's VM, if the caller may act on it."""
    return visible_vm(svc, principal, vm_id)


async def owned_vm_id(vm: Annotated[Vm, Depends(owned_vm)]) -> str:
    """``owned_vm``'s id (FastAPI resolves ``owned_vm`` once per request, so a handler may take both)."""
    return vm.id


async def owned_snapshot_id(snapshot_id: str, principal: PrincipalDep, svc: ServicesDep) -> str:
    if not principal.can_see(svc.vms.snapshot(snapshot_id).owner_id):
        raise NotFoundError(f"snapshot {snapshot_id} not found")
    return snapshot_id


OwnedVm = Annotated[Vm, Depends(owned_vm)]
OwnedVmId = Annotated[str, Depends(owned_vm_id)]
OwnedSnapshotId = Annotated[str, Depends(owned_snapshot_id)]
AdminDep = Annotated[Principal, Depends(require_admin)]
