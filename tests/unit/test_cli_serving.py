"""``sheesh serve`` and ``sheesh node`` run their servers on asyncio's own event loop: uvloop (installed with
uvicorn[standard]) made creates slower here (``serving.run``)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import uvicorn
import uvloop

from sheesh.api.http import AccessLogAfter
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


async def test_the_access_log_line_is_written_after_the_step_that_answers(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn logs a request as its response starts; ``AccessLogAfter`` runs that once the loop's current step
    (which writes the response) is over."""
    logger = logging.getLogger("test.access")
    after = AccessLogAfter(logger, asyncio.get_running_loop())
    with caplog.at_level(logging.INFO, logger="test.access"):
        after.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/vms", "1.1", 200)
        assert caplog.records == []
        await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records] == ['127.0.0.1:5000 - "GET /v1/vms HTTP/1.1" 200']
