"""Running uvicorn for ``sheesh serve`` and ``sheesh node``: our HTTP protocol options, TLS, and several servers
in one process that stop together."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from sheesh.api.http import JsonErrorsProtocol
from sheesh.config import Settings
from sheesh.tls import server_tls

HTTP_OPTIONS: dict[str, Any] = {
    "http": JsonErrorsProtocol,
    "log_level": "info",
}
"""JSON answers (414/431/400) to requests uvicorn cannot parse, with a lingering close."""


def server_options(settings: Settings) -> tuple[dict[str, Any], Path | None]:
    """uvicorn options (ours, and the certificate when TLS is configured) and that certificate's path.

    :raise SheeshError: TLS is configured but its files are not usable
    """
    tls = server_tls(settings)
    options = dict(HTTP_OPTIONS)
    if tls is None:
        return options, None
    options.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
    return options, tls.cert


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (``serve_all`` stops all servers together)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(configs: list[uvicorn.Config]) -> None:
    """``serve_all`` on asyncio's own event loop, not uvloop (which ``uvicorn.run`` would pick). Measured here,
    uvloop starts a subprocess in 5 ms from a 50 MB process and 17-19 ms from a 300 MB one (its start-up time
    grows with the parent's memory), asyncio in under 1 ms either way; the node starts ``ip``, ``nft`` and
    ``qemu-img`` on a create's path, and a create -> first exec from a template went from 54-60 to 75-112 ms
    under uvloop. Execs and API throughput were no faster with it."""
    asyncio.run(serve_all(configs))


async def serve_all(configs: list[uvicorn.Config]) -> None:
    """The control-plane API and the node's WebSocket port in one process; SIGINT/SIGTERM stop both."""
    servers = [_Server(config) for config in configs]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop()
    await asyncio.gather(*tasks, return_exceptions=True)
