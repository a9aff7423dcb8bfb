"""The UI's Jinja2 templates (``sheesh/web/templates``, autoescaped) and how a handler answers with one: a whole
page, or for an htmx request the fragment it swaps in. Errors of the services show as an error fragment with the
status the REST API gives them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from sheesh.api.ui.session import UiSession

NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "same-origin", "X-Frame-Options": "SAMEORIGIN"}


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("sheesh", "web/templates"), autoescape=select_autoescape(default=True))
    env.filters["ago"] = _ago
    env.filters["when"] = lambda d: d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if d else ""
    return env


templates = Jinja2Templates(env=_environment())


def render(
    request: Request, name: str, session: UiSession | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """Template ``name`` with the session (its principal and CSRF token) and ``context``."""
    ctx = {"session": session, "principal": session.principal if session else None, **context}
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code, headers=NO_STORE)
    return response


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def redirect(request: Request, url: str) -> Response:
    """To ``url``: ``HX-Redirect`` for htmx (it follows it as a page load), else 303 See Other."""
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return Response(status_code=303, headers={"Location": url})
