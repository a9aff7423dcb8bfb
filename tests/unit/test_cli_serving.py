"""``sheesh serve`` and ``sheesh node`` run their servers on asyncio's own event loop: uvloop (installed with
uvicorn[standard]) made creates slower here (``serving.run``)."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
import uvloop

from sheesh.cli import serving


async def _app(scope: object, receive: object, send: object) -> None:  # never called: serve_all is replaced
    raise AssertionError("not served")


def test_run_serves_all_configs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[asyncio.AbstractEventLoop, list[uvicorn.Config]]] = []

    async def serve_all(configs: list[uvicorn.Config]) -> None:
        seen.append((asyncio.get_running_loop(), configs))

    monkeypatch.setattr(serving, "serve_all", serve_all)
    configs = [uvicorn.Config(_app, port=0), uvicorn.Config(_app, port=0)]
    serving.run(configs)
    [(loop, served)] = seen
    assert served == configs
    assert isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)
