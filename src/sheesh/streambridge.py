"""One ``ExecStream`` served on an accepted Starlette WebSocket, in the message format of ``sheesh.execstream``:
the public ``/v1/vms/:id/exec/stream`` and the node contract's ``/node/v1/exec_stream`` both end here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketState

from sheesh.errors import SheeshError
from sheesh.execstream import (
    ERROR_CLOSE_BASE,
    ExecStream,
    StreamOutput,
    StreamProtocolError,
    apply_client_message,
    error_message,
    exit_message,
    output_frame,
)

log = logging.getLogger(__name__)
NORMAL = 1000
INTERNAL_ERROR = 1011
ErrorName = Callable[[SheeshError], str]


async def refuse(ws: WebSocket, exc: SheeshError, *, error: str | None = None) -> None:
    """Tell the client why the stream cannot be (an ``error`` message), then close with 4000 + status."""
    with contextlib.suppress(Exception):
        if ws.application_state == WebSocketState.CONNECTING:
            await ws.accept()
        await ws.send_text(error_message(exc.status_code, exc.message, error))
        await ws.close(ERROR_CLOSE_BASE + exc.status_code, exc.message[:120])


class _Bridge:
    """The two directions of one stream; sends are serialised (both directions write to the socket)."""

    def __init__(self, ws: WebSocket, stream: ExecStream, error_name: ErrorName | None) -> None:
        self.ws = ws
        self.stream = stream
        self.error_name = error_name
        self.lock = asyncio.Lock()

    def name_of(self, exc: SheeshError) -> str | None:
        return self.error_name(exc) if self.error_name is not None else None

    async def send_text(self, text: str) -> None:
        async with self.lock:
            await self.ws.send_text(text)

    async def inbound(self) -> None:
        """Client messages until it leaves; a refused message is answered with an error, the stream goes on."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    await self.stream.write(message["bytes"])
                elif message.get("text") is not None:
                    await apply_client_message(self.stream, message["text"])
            except StreamProtocolError as exc:
                await self.send_text(error_message(400, str(exc)))
            except SheeshError as exc:
                await self.send_text(error_message(exc.status_code, exc.message, self.name_of(exc)))

    async def outbound(self) -> None:
        """The command's output, then its exit."""
        async for event in self.stream.events():
            if isinstance(event, StreamOutput):
                frame = output_frame(event)
                async with self.lock:
                    await self.ws.send_bytes(frame)
            else:
                await self.send_text(exit_message(event))
                return

    async def run(self) -> None:
        await self.send_text(json.dumps({"type": "started", "pid": self.stream.pid}))
        reader = asyncio.create_task(self.inbound())
        writer = asyncio.create_task(self.outbound())
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        if writer not in done:  # the client left first: the command is killed (``close``)
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with contextlib.suppress(asyncio.CancelledError):
            await writer  # an error of the stream itself propagates
        if writer in done:
            with contextlib.suppress(Exception):
                await self.ws.close(NORMAL)


async def serve_stream(ws: WebSocket, stream: ExecStream, *, error_name: ErrorName | None = None) -> None:
    """Pump ``stream`` to and from ``ws`` until the command ends (exit message, close 1000) or the client
    leaves (the command is killed). ``error_name``: error messages also name the error class (the node
    contract, whose client raises the same class again)."""
    bridge = _Bridge(ws, stream, error_name)
    try:
        await bridge.run()
    except SheeshError as exc:
        await refuse(ws, exc, error=bridge.name_of(exc))
    except Exception:
        log.exception("exec stream failed")
        with contextlib.suppress(Exception):
            await ws.close(INTERNAL_ERROR)
    finally:
        await stream.close()
