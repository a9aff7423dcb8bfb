"""``sheesh serve`` and ``sheesh node`` run their servers on uvicorn's event loop (uvloop), as ``uvicorn.run``
would: ``asyncio.run`` alone gave them the default loop."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
import uvloop

from sheesh.cli import serving


async def _app(scope: object, receive: object, send: object) -> None:  # never called: serve_all is replaced
    raise AssertionError("not served")


def test_run_serves_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[type[asyncio.AbstractEventLoop], list[uvicorn.Config]]] = []

    async def serve_all(configs: list[uvicorn.Config]) -> None:
        seen.append((type(asyncio.get_running_loop()), configs))

    monkeypatch.setattr(serving, "serve_all", serve_all)
    configs = [uvicorn.Config(_app, port=0), uvicorn.Config(_app, port=0)]
    serving.run(configs)
    assert seen == [(uvloop.Loop, configs)]


def test_run_follows_the_configured_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loops: list[type[asyncio.AbstractEventLoop]] = []

    async def serve_all(configs: list[uvicorn.Config]) -> None:
        loops.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(serving, "serve_all", serve_all)
    serving.run([uvicorn.Config(_app, loop="asyncio")])
    assert loops and not issubclass(loops[0], uvloop.Loop)
