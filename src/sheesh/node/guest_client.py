"""Host side of the guest-agent channel: one multiplexed stream connection per VM."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
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
from sheesh.guest.protocol import ErrorKind, Op

_KINDS: dict[str, type[SheeshError]] = {
    ErrorKind.INVALID: InvalidInputError,
    ErrorKind.NOT_FOUND: NotFoundError,
    ErrorKind.TOO_LARGE: PayloadTooLargeError,
}
PROBE_S = 2.0
"""A call waiting longer than this pings the agent (at most every PROBE_S) to find out whether it is alive."""
PROBE_MISSES = 3
"""Unanswered pings in a row after which the agent is taken for dead and the waiting calls fail."""


class GuestClient:
    """Sends requests to the guest agent over a Unix stream socket and matches replies by ``id``.

    Connects lazily and reconnects after the peer goes away. ``call`` raises ``InvalidInputError`` for
    requests the agent refuses, ``UnavailableError``/``GuestTimeoutError`` when it cannot be reached.
    The agent can die or be restarted (by the guest's init) while requests wait: a reply from an agent
    process other than the one a request was sent to fails that request at once, and long waits ping the
    agent so a dead one fails them within ``PROBE_S * PROBE_MISSES`` seconds.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], str | None]] = {}
        """Each waiting request's future and the agent process it was sent to (None: not known yet)."""
        self.agent_id: str | None = None
        self._streams: dict[str, asyncio.Queue[dict[str, Any] | SheeshError]] = {}
        """The frames of each streaming job (``protocol.StreamOutput``/``StreamExit``), by stream id."""
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self.heard_at = 0.0
        """``time.monotonic()`` when the agent last sent anything."""

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
                self.heard_at = time.monotonic()
                for msg in decoder.feed(data):
                    if "event" in msg:
                        queue = self._streams.get(str(msg.get("stream")))
                        if queue is not None:
                            queue.put_nowait(msg)
                        continue
                    fut, _ = self._pending.pop(msg.get("id", -1), (None, None))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    self._note_agent(msg.get("agent"))
        except OSError:
            pass
        finally:
            self._fail_pending(UnavailableError("connection to guest agent lost"))
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _fail_pending(self, exc: SheeshError) -> None:
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait(exc)
        self._streams.clear()

    def subscribe(self, stream: str) -> asyncio.Queue[dict[str, Any] | SheeshError]:
        """The queue the frames of streaming job ``stream`` will arrive in (subscribe before starting it); a
        lost connection puts its error there."""
        queue: asyncio.Queue[dict[str, Any] | SheeshError] = asyncio.Queue()
        self._streams[stream] = queue
        return queue

    def unsubscribe(self, stream: str) -> None:
        self._streams.pop(stream, None)

    def notify(self, op: Op, **args: Any) -> None:
        """Send an op the agent does not answer (``protocol.NO_REPLY``), if connected; never waits."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(protocol.encode({"op": op, **args}))

    def _note_agent(self, agent: object) -> None:
        """A reply named its agent process: requests sent to another (earlier) one will never be answered."""
        if not isinstance(agent, str) or agent == self.agent_id:
            return
        self.agent_id = agent
        for rid, (fut, sent_to) in list(self._pending.items()):
            if sent_to is not None and sent_to != agent:
                del self._pending[rid]
                if not fut.done():
                    fut.set_exception(UnavailableError("the guest agent restarted while the request ran"))

    async def call(self, op: Op, timeout: float, **args: Any) -> dict[str, Any]:
        """Send ``op`` and wait up to ``timeout`` seconds for its reply (the write included).

        :raise InvalidInputError, NotFoundError, PayloadTooLargeError: the agent refused the request
        :raise GuestTimeoutError: no reply in time
        :raise UnavailableError: no connection, or the agent died or restarted while the request waited
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        writer = await self._ensure()
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[rid] = (fut, self.agent_id)
        try:
            writer.write(protocol.encode({"id": rid, "op": op, **args}))
            await asyncio.wait_for(writer.drain(), max(0.0, deadline - loop.time()))
            reply = await self._wait(op, fut, deadline)
        except TimeoutError as exc:
            raise GuestTimeoutError(f"guest agent did not answer {op} within {timeout:.1f}s") from exc
        except OSError as exc:
            raise UnavailableError(f"guest agent connection failed: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: an outcome that arrived while we gave up must not be reported
        if not reply.get("ok"):
            message = str(reply.get("error") or "guest agent error")
            kind = reply.get("kind")
            if kind in _KINDS:
                raise _KINDS[kind](message)
            raise UnavailableError(f"guest agent: {message}")
        return reply

    async def _wait(self, op: Op, fut: asyncio.Future[dict[str, Any]], deadline: float) -> dict[str, Any]:
        """The reply to one request; while it is long in coming, ping the agent to learn it still lives."""
        loop = asyncio.get_running_loop()
        misses = 0
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(asyncio.shield(fut), min(left, PROBE_S))
            except TimeoutError:
                if fut.done() or op == Op.PING or deadline - loop.time() <= 0:
                    continue
            try:
                await self.call(Op.PING, PROBE_S)
                misses = 0
            except GuestTimeoutError:
                misses += 1
                if misses >= PROBE_MISSES:
                    fut.cancel()
                    raise UnavailableError(
                        f"the guest agent stopped answering ({PROBE_MISSES} pings unanswered) during {op}"
                    ) from None

    async def wait_ready(self, timeout: float, alive: Any = None, op: Op = Op.PING, **args: Any) -> dict[str, Any]:
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
