"""Streaming exec from the SDK: the WebSocket ``/v1/vms/:id/exec/stream`` (its messages: ``sheesh.execstream``).

``ExecSession`` (sync, websockets' threading client) and ``AsyncExecSession`` (asyncio) are a running command:
iterate them for ``StreamOutput`` chunks (bytes, unchanged) and the final ``StreamExit``; ``send`` writes stdin,
``close_stdin``, ``signal``/``kill``, ``resize`` a terminal. Leaving the ``with`` block (or ``close``) kills a
command that still runs.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sheesh.client.errors import APIConnectionError, StreamError, error_for
from sheesh.client.types import StreamResult
from sheesh.execstream import (
    StreamEvent,
    StreamExit,
    StreamProtocolError,
    exit_of,
    parse_output_frame,
    parse_server_message,
    resize_message,
    signal_message,
    stdin_eof,
)

MAX_MESSAGE = 4 * 1024 * 1024


def stream_url(base_url: str, vm_id: str) -> str:
    return base_url.replace("http", "ws", 1) + f"/v1/vms/{quote(vm_id, safe='')}/exec/stream"


def first_message(
    cmd: str,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout_ms: int | None = None,
    pty: bool = False,
    rows: int = 24,
    cols: int = 80,
) -> str:
    body: dict[str, Any] = {"cmd": cmd, "pty": pty, "rows": rows, "cols": cols}
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = env
    if timeout_ms is not None:
        body["timeoutMs"] = timeout_ms
    return json.dumps(body)


def _tls(url: str, verify: bool | ssl.SSLContext) -> ssl.SSLContext | None:
    if not url.startswith("wss:"):
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _started(text: str | bytes) -> int:
    """The pid of the ``started`` message, or the ``APIError`` of an ``error`` one."""
    if not isinstance(text, str):
        raise StreamError("the server sent output before the command started")
    try:
        message = parse_server_message(text)
    except StreamProtocolError as exc:
        raise StreamError(str(exc)) from None
    if message["type"] == "error":
        raise error_for(int(message.get("status", 500)), str(message["message"]), message)
    if message["type"] != "started":
        raise StreamError(f"unexpected first message {message['type']}")
    return int(message.get("pid", 0))


def _event(message: str | bytes) -> StreamEvent | None:
    """An output chunk or the exit; None for a refusal of one of our messages (the command goes on)."""
    try:
        if isinstance(message, bytes):
            return parse_output_frame(message)
        parsed = parse_server_message(message)
    except StreamProtocolError as exc:
        raise StreamError(str(exc)) from None
    if parsed["type"] == "exit":
        return exit_of(parsed)
    if parsed["type"] == "error":
        status = int(parsed.get("status", 500))
        if status != 400:  # the command could not go on
            raise error_for(status, str(parsed["message"]), parsed)
    return None


def _result(event: StreamExit) -> StreamResult:
    return StreamResult(exit_code=event.exit_code, timed_out=event.timed_out, truncated=event.truncated)


class ExecSession:
    """A streaming command (sync). Example::

    with vm.open_stream("cat") as session:
        session.send(b"hello\\n")
        session.close_stdin()
        for event in session:
            print(event)
    """

    def __init__(self, ws: ClientConnection, pid: int) -> None:
        self._ws = ws
        self.pid = pid
        self.result: StreamResult | None = None

    @classmethod
    def open(
        cls, url: str, headers: dict[str, str], first: str, verify: bool | ssl.SSLContext, timeout_s: float
    ) -> ExecSession:
        try:
            ws = connect(  # entered (websockets 17 warns about a connection used without ``with``); closed by us
                url, additional_headers=headers, ssl=_tls(url, verify), max_size=MAX_MESSAGE, open_timeout=timeout_s
            ).__enter__()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise APIConnectionError(f"cannot open {url}: {exc}") from exc
        try:
            ws.send(first)
            return cls(ws, _started(ws.recv(timeout_s)))
        except BaseException:
            ws.close()
            raise

    def __iter__(self) -> Iterator[StreamEvent]:
        """Output chunks as they come, then the exit (after which the session is over)."""
        if self.result is not None:
            return
        try:
            for message in self._ws:
                event = _event(message)
                if event is None:
                    continue
                if isinstance(event, StreamExit):
                    self.result = _result(event)
                    yield event
                    return
                yield event
        except ConnectionClosed as exc:
            raise StreamError(f"the stream broke off: {exc}") from exc
        raise StreamError("the stream ended without the command's exit")

    def wait(self) -> StreamResult:
        """Read (and drop) the rest of the output; how the command ended."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def _send(self, message: str | bytes) -> None:
        try:
            self._ws.send(message)
        except ConnectionClosed as exc:
            raise StreamError(f"the stream is closed: {exc}") from exc

    def send(self, data: bytes | str) -> None:
        """Write to the command's stdin (or terminal)."""
        self._send(data.encode() if isinstance(data, str) else data)

    def close_stdin(self) -> None:
        self._send(stdin_eof())

    def signal(self, name: str) -> None:
        """Send a signal: KILL, TERM, INT, HUP, QUIT, USR1 or USR2."""
        self._send(signal_message(name))

    def kill(self) -> None:
        self.signal("KILL")

    def resize(self, rows: int, cols: int) -> None:
        """The terminal's new size (``pty`` sessions)."""
        self._send(resize_message(rows, cols))

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncExecSession:
    """A streaming command (asyncio). Example::

    async with await vm.open_stream("cat") as session:
        await session.send(b"hello\\n")
        await session.close_stdin()
        async for event in session:
            print(event)
    """

    def __init__(self, ws: AsyncConnection, pid: int) -> None:
        self._ws = ws
        self.pid = pid
        self.result: StreamResult | None = None

    @classmethod
    async def open(
        cls, url: str, headers: dict[str, str], first: str, verify: bool | ssl.SSLContext, timeout_s: float
    ) -> AsyncExecSession:
        try:
            ws = await async_connect(
                url, additional_headers=headers, ssl=_tls(url, verify), max_size=MAX_MESSAGE, open_timeout=timeout_s
            )
        except (OSError, InvalidHandshake, InvalidStatus, TimeoutError) as exc:
            raise APIConnectionError(f"cannot open {url}: {exc}") from exc
        try:
            await ws.send(first)
            return cls(ws, _started(await ws.recv()))
        except BaseException:
            await ws.close()
            raise

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self.result is not None:
            return
        try:
            async for message in self._ws:
                event = _event(message)
                if event is None:
                    continue
                if isinstance(event, StreamExit):
                    self.result = _result(event)
                    yield event
                    return
                yield event
        except ConnectionClosed as exc:
            raise StreamError(f"the stream broke off: {exc}") from exc
        raise StreamError("the stream ended without the command's exit")

    async def wait(self) -> StreamResult:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def _send(self, message: str | bytes) -> None:
        try:
            await self._ws.send(message)
        except ConnectionClosed as exc:
            raise StreamError(f"the stream is closed: {exc}") from exc

    async def send(self, data: bytes | str) -> None:
        await self._send(data.encode() if isinstance(data, str) else data)

    async def close_stdin(self) -> None:
        await self._send(stdin_eof())

    async def signal(self, name: str) -> None:
        await self._send(signal_message(name))

    async def kill(self) -> None:
        await self.signal("KILL")

    async def resize(self, rows: int, cols: int) -> None:
        await self._send(resize_message(rows, cols))

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> AsyncExecSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
