"""Browser consoles: ``/console/serial`` (xterm.js) and ``/console/vnc`` (noVNC) pages for a VM, given an
agent token (``GET /v1/vms/:id/agentToken``) as ``?token=``; they connect to the node's WebSocket port.
The pages carry no secret and need no login: the one-time token is the credential."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from sheesh.errors import UnavailableError
from sheesh.web.assets import assets_ready

router = APIRouter(prefix="/console", include_in_schema=False)
PAGES = resources.files("sheesh.web") / "pages"
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _page(request: Request, name: str) -> HTMLResponse:
    if not assets_ready(request.app.state.services.settings.resolved_web_dir()):
        raise UnavailableError("console assets are not installed: run `sheesh web fetch` (scripts/setup.sh does)")
    return HTMLResponse((PAGES / name).read_text(), headers=NO_STORE)


@router.get("/serial")
async def serial_page(request: Request) -> HTMLResponse:
    return _page(request, "serial.html")


@router.get("/vnc")
async def vnc_page(request: Request) -> HTMLResponse:
    return _page(request, "vnc.html")


@router.get("/page.js")
async def page_js(request: Request) -> Response:
    settings = request.app.state.services.settings
    host = settings.node_public_host or ("" if settings.host in ("0.0.0.0", "::") else settings.host)
    head = f"const SHEESH_NODE_HOST = {json.dumps(host)};\nconst SHEESH_NODE_PORT = {int(settings.node_port)};\n"
    return Response(head + (PAGES / "page.js").read_text(), media_type="text/javascript")


def install(app: FastAPI, web_dir: Path) -> None:
    """The console routes and the npm assets under ``/console/assets``."""
    app.include_router(router)
    app.mount("/console/assets", StaticFiles(directory=str(web_dir), check_dir=False), name="console-assets")
