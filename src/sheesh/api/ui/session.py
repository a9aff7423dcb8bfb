"""Who a UI request is: the ``rds_session`` cookie, checked like the REST API checks it, plus the CSRF token
every state-changing UI request must send back (``X-CSRF-Token``, which htmx adds to each request, or a
``csrf`` form field). A missing or bad cookie sends a page request to the login page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from sheesh.api.deps import SESSION_COOKIE, ServicesDep
from sheesh.auth.apikeys import Principal
from sheesh.control.services import Services
from sheesh.errors import AuthenticationError, ForbiddenError, SheeshError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


class LoginRequired(AuthenticationError):
    """No valid session cookie: a page answers with a redirect to the login page (htmx: ``HX-Redirect``)."""


@dataclass(frozen=True)
class UiSession:
    principal: Principal
    csrf: str
    """The CSRF token of this session, rendered into every page."""


def session_of(request: Request, svc: Services) -> UiSession | None:
    """The session of ``request``'s cookie, or None (no cookie, tampered, expired, user gone)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        claims = svc.sessions.verify(token, "cookie")
    except SheeshError:
        return None
    principal = svc.auth.principal_for_user(claims.user_id)
    return UiSession(principal, svc.sessions.csrf_token(token)) if principal is not None else None


async def ui_session(request: Request, svc: ServicesDep) -> UiSession:
    """The logged-in session; for a state-changing request, only with its CSRF token.

    :raise LoginRequired: no valid session cookie
    :raise CsrfError: a state-changing request without the session's CSRF token
    """
    session = session_of(request, svc)
    if session is None:
        raise LoginRequired("log in first")
    if request.method not in SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER)
        if presented is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            field = (await request.form()).get(CSRF_FIELD)
            presented = field if isinstance(field, str) else None
        svc.sessions.check_csrf(request.cookies[SESSION_COOKIE], presented)
    return session


async def admin_session(session: Annotated[UiSession, Depends(ui_session)]) -> UiSession:
    if not session.principal.is_admin:
        raise ForbiddenError("admin role required")
    return session


SessionDep = Annotated[UiSession, Depends(ui_session)]
AdminSessionDep = Annotated[UiSession, Depends(admin_session)]
