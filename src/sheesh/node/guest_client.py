"""Host side of the guest-agent channel: one multiplexed stream connection per VM."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path
from typing import Any

from sheesh.errors import (
    GuestTimeoutError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    SheeshError,
    UnavailableError,
)
from sheesh.guest import protocol

_KINDS: dict[str, type[SheeshError]] = {
    "invalid": InvalidInputError,
    "not_found": NotFoundError,
    "too_large": PayloadTooLargeError,
}


class GuestClient:
    """Sends requests to the guest agent over a Unix stream socket and matches replies by ``id``.

    Connects lazily and reconnects after the peer goes away. ``call`` raises ``InvalidInputError`` for
    requests the agent refuses, ``UnavailableError``/``GuestTimeoutError`` when it cannot be reached.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _ensure(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError as exc:
                raise UnavailableError(f"guest agent socket unavailable: {exc.strerror or exc}") from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = protocol.FrameDecoder()
        try:
            while data := await reader.read(65536):
                for msg in decoder.feed(data):
                    fut = self._pending.pop(msg.get("id", -1), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except OSError:
            pass
        finally:
            self._fail_pending(UnavailableError("connection to guest agent lost"))
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _fail_pending(self, exc: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    async def call(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        writer = await self._ensure()
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            writer.write(protocol.encode({"id": rid, "op": op, **args}))
            await writer.drain()
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise GuestTimeoutError(f"guest agent did not answer {op} within {timeout:.1f}s") from exc
        except OSError as exc:
            raise UnavailableError(f"guest agent connection failed: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            message = str(reply.get("error") or "guest agent error")
            kind = reply.get("kind")
            if kind in _KINDS:
                raise _KINDS[kind](message)
            raise UnavailableError(f"guest agent: {message}")
        return reply

    async def wait_ready(self, timeout: float, alive: Any = None, op: str = "ping", **args: Any) -> dict[str, Any]:
        """Send ``op`` (default ``ping``; must be idempotent) until the agent answers. ``alive()`` (optional)
        is checked between tries: when it returns False the wait ends early with ``UnavailableError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if alive is not None and not alive():
                raise UnavailableError("VM stopped before its guest agent came up")
            try:
                return await self.call(op, 0.25, **args)
            except (UnavailableError, GuestTimeoutError):
                if loop.time() >= deadline:
                    raise GuestTimeoutError(f"guest agent not ready after {timeout:.0f}s") from None
                if not self.connected:
                    await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
            self._reader_task = None
        self._fail_pending(UnavailableError("guest client closed"))
