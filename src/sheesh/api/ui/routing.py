"""The UI's route class: an error of a UI handler answers with HTML, not the REST API's JSON. No session: a
redirect to the login page. Otherwise the error fragment (for htmx, which swaps it into the target) or an
error page, with the status the REST API gives the same error."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from sheesh.api.errors import validation_message
from sheesh.api.ui.render import is_htmx, redirect, render
from sheesh.api.ui.session import LoginRequired, session_of
from sheesh.errors import SheeshError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class UiRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def ui_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return redirect(request, "/ui/login")
            except RequestValidationError as exc:
                return _error(request, 400, validation_message(exc.errors()))
            except SheeshError as exc:
                return _error(request, exc.status_code, exc.message)

        return ui_handler


def _error(request: Request, status: int, message: str) -> Response:
    session = session_of(request, request.app.state.services)
    name = "_error.html" if is_htmx(request) else "error.html"
    return render(request, name, session, status, message=message, status=status)
