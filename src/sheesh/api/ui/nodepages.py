"""The UI's nodes page (admins): each host's state, capacity, allocation and VMs; drain and undrain."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from sheesh.api.deps import ServicesDep
from sheesh.api.ui.render import redirect, render
from sheesh.api.ui.routing import UiRoute
from sheesh.api.ui.session import AdminSessionDep
from sheesh.errors import NotFoundError
from sheesh.models import NodeState

router = APIRouter(prefix="/ui/nodes", route_class=UiRoute, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
async def nodes_page(request: Request, session: AdminSessionDep, svc: ServicesDep) -> HTMLResponse:
    return render(request, "nodes.html", session, nodes=await svc.nodes.views())


@router.post("/{name}/{action}")
async def drain(name: str, action: str, request: Request, _: AdminSessionDep, svc: ServicesDep) -> Response:
    states = {"drain": NodeState.DRAINING, "undrain": NodeState.READY}
    if action not in states:
        raise NotFoundError(f"no action {action!r}")
    svc.nodes.set_state(name, states[action])
    return redirect(request, "/ui/nodes")
