"""The admin web UI at ``/ui``: server-rendered pages (Jinja2) driven by htmx, behind the ``rds_session``
cookie with a CSRF token on every state-changing request. It calls the same services as the REST API."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from sheesh.api.ui import accountpages, imagepages, nodepages, vmpages
from sheesh.api.ui.history import UsageHistory

STATIC = resources.files("sheesh.web") / "ui"


def install(app: FastAPI) -> None:
    app.state.ui_histories = {}  # the VM list's chart samples, per viewer (vmpages.history)
    app.state.ui_usage = UsageHistory()  # the VM pages' CPU and memory readings
    app.include_router(accountpages.router)
    app.include_router(vmpages.router)
    app.include_router(imagepages.router)
    app.include_router(nodepages.router)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
