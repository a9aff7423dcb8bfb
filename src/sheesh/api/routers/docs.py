"""Public documentation: /openapi.json (also /swagger/openapi.json; OpenAPI 3.0), /swagger (Swagger UI served
locally), /docs/*, and Kyun's /endpoints (every endpoint, from the OpenAPI document)."""

from __future__ import annotations

import html
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import markdown
import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from sheesh.api.openapi import complete_responses, to_openapi_30
from sheesh.errors import NotFoundError

router = APIRouter(include_in_schema=False)
_PAGE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SWAGGER_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>sheesh API explorer</title>
<link rel="stylesheet" href="/swagger/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/swagger/static/swagger-ui-bundle.js"></script>
<script src="/swagger/static/swagger-ui-standalone-preset.js"></script>
<script src="/swagger/init.js"></script>
</body></html>"""
SWAGGER_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"});"""
DOC_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} - sheesh docs</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
pre{{background:#f4f4f4;padding:.8rem;overflow:auto}}code{{background:#f4f4f4}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem}}</style></head>
<body><nav><a href="/docs">docs</a> | <a href="/swagger">API explorer</a> | <a href="/openapi.json">openapi.json</a>
</nav>{body}</body></html>"""


def _docs_dir() -> Path:
    return Path(str(resources.files("sheesh") / "docs"))


@cache
def _render(name: str) -> str:
    path = _docs_dir() / f"{name}.md"
    text = path.read_text()
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    title = text.splitlines()[0].lstrip("# ") if text else name
    return DOC_HTML.format(title=html.escape(title), body=body)


def _page(name: str) -> str:
    if not _PAGE.match(name) or not (_docs_dir() / f"{name}.md").is_file():
        raise NotFoundError(f"no documentation page {name}")
    return name


@router.get("/docs")
async def docs_index() -> HTMLResponse:
    return HTMLResponse(_render("index"))


@router.get("/docs/{page}", response_model=None)
async def docs_page(page: str) -> HTMLResponse | PlainTextResponse:
    if page.endswith(".md"):
        return PlainTextResponse((_docs_dir() / f"{_page(page[:-3])}.md").read_text(), media_type="text/markdown")
    return HTMLResponse(_render(_page(page)))


@router.get("/swagger")
async def swagger() -> HTMLResponse:
    return HTMLResponse(SWAGGER_HTML)


@router.get("/swagger/init.js")
async def swagger_init() -> PlainTextResponse:
    return PlainTextResponse(SWAGGER_INIT, media_type="application/javascript")


def install(app: FastAPI) -> None:
    """Mount the docs routes, the Swagger UI assets and the 3.0 OpenAPI document."""
    app.include_router(router)
    app.mount("/swagger/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})
            app.openapi_schema = complete_responses(to_openapi_30(schema))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    @app.get("/swagger/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

    @app.get("/endpoints", include_in_schema=False)
    async def endpoints() -> JSONResponse:
        """Every endpoint (Kyun's ``/endpoints``): method, path, summary and tags, from the OpenAPI document."""
        listed = [
            {"method": method.upper(), "path": path, "summary": op.get("summary", ""), "tags": op.get("tags", [])}
            for path, item in openapi()["paths"].items()
            for method, op in item.items()
            if isinstance(op, dict) and method in ("get", "post", "put", "patch", "delete")
        ]
        return JSONResponse({"endpoints": listed, "openapi": "/openapi.json", "docs": "/docs"})
