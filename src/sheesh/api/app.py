"""App factory: ``create_app(services)`` with injected dependencies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from sheesh import __version__
from sheesh.api import errors, limits, ratelimit, ui, wake
from sheesh.api.deps import authenticate
from sheesh.api.routers import (
    accounts,
    ci,
    console,
    docs,
    execution,
    files,
    images,
    karma,
    kyun,
    metrics,
    network,
    nodes,
    rerobots,
    snapshots,
    vms,
    workspaces,
)
from sheesh.api.vmlists import VmListCache
from sheesh.control.services import Services

log = logging.getLogger(__name__)


async def _reconcile_loop(svc: Services) -> None:
    """The periodic work, on one replica at a time (``Store.lead``): node heartbeats, VM processes, VM
    timeouts, rerobots instance expiries and reservations."""
    while True:
        await asyncio.sleep(svc.settings.reconcile_interval_s)
        try:
            leader = svc.store.lead()
            svc.metrics.leader.set(1 if leader else 0)
            if not leader:
                continue
            svc.nodes.check()
            await svc.vms.reconcile()
            await svc.vms.expire()
            await svc.vms.auto_pause()
            await svc.instances.reconcile()
            await svc.node.ensure_network()  # rules removed behind the node's back (a host firewall reload)
        except Exception:
            log.exception("reconcile failed")


def create_app(svc: Services, *, close_services: bool = True) -> FastAPI:
    """The control-plane HTTP app. On start-up it recovers VM state; on shutdown it closes ``svc``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for line in svc.auth.bootstrap():  # idempotent; `sheesh serve` has usually shown these already
            log.warning("%s", line)
        await svc.vms.recover()
        await svc.start()
        task = asyncio.create_task(_reconcile_loop(svc))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if close_services:
                await svc.close()

    app = FastAPI(
        title="sheesh",
        version=__version__,
        lifespan=lifespan,
        description="Self-hosted isolated microVMs (run dat sheesh API).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = svc
    app.state.vm_lists = VmListCache()
    errors.install(app)
    app.add_middleware(wake.WakeGuest, services=svc)  # inside the global rate limit: refused requests wake nothing
    ratelimit.install(app, svc)
    app.add_middleware(limits.BodyLimit, max_bytes=lambda: svc.settings.max_body_bytes)
    for module in (vms, execution, files, snapshots, images, network, kyun):
        app.include_router(module.router, dependencies=[Depends(authenticate)])
    app.include_router(execution.streams)
    app.include_router(accounts.router)
    app.include_router(workspaces.router)
    app.include_router(rerobots.router)
    app.include_router(ci.router)
    app.include_router(karma.router)
    app.include_router(metrics.router)
    app.include_router(nodes.router)
    docs.install(app)
    console.install(app, svc.settings.resolved_web_dir())
    ui.install(app)
    return app
