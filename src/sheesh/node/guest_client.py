"""Host side of the guest-agent channel: one multiplexed stream connection per VM."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

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


class _Connection(asyncio.Protocol):
    """One stream connection to the agent: each frame is decoded as its bytes arrive and handed to ``deliver``
    (no reader task between the socket and the waiting call); ``drain`` waits while the socket's buffer is full."""

    def __init__(self, deliver: Callable[[dict[str, Any]], None], lost: Callable[[], None]) -> None:
        self._deliver = deliver
        self._lost = lost
        self._decoder = protocol.FrameDecoder()
        self._transport: asyncio.WriteTransport | None = None
        self._drained: asyncio.Future[None] | None = None
        """Set while writing is paused; done when it may go on (or the connection is lost)."""

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        for message in self._decoder.feed(data):
            self._deliver(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.resume_writing()
        self._lost()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def write(self, frame: bytes) -> None:
        if self._transport is None:
            raise ConnectionResetError("connection to the guest agent lost")
        self._transport.write(frame)

    async def drain(self, deadline: float) -> None:
        """Until the socket takes more (by ``deadline``, loop time, or ``TimeoutError``)."""
        if self._drained is not None:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(self._drained)  # shared by every writer waiting
        if self._transport is None:
            raise ConnectionResetError("connection to the guest agent lost")

    def close(self) -> None:
        """At once, unsent bytes dropped: an agent that stopped reading must not hold the close."""
        if self._transport is not None:
            self._transport.abort()


class GuestClient:
    """Sends requests to the guest agent over a Unix stream socket and matches replies by ``id``.

    Connects lazily and reconnects after the peer goes away. ``call`` raises ``InvalidInputError`` for
    requests the agent refuses, ``UnavailableError``/``GuestTimeoutError`` when it cannot be reached.
    The agent can die or be restarted (by the guest's init) while requests wait: a reply from an agent
    process other than the one a request was sent to fails that request at once, and long waits ping the
    agent so a dead one fails them within ``PROBE_S * PROBE_MISSES`` seconds.

    A call awaits its reply's future directly. Whatever ends the wait settles that future: the reply, the call's
    deadline (a timer), the probe's verdict, a lost connection. After an idle gap each extra step of the event
    loop between the reply's bytes and the caller costs; there is one.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], str | None]] = {}
        """Each waiting request's future and the agent process it was sent to (None: not known yet)."""
        self.agent_id: str | None = None
        self._streams: dict[str, asyncio.Queue[dict[str, Any] | SheeshError]] = {}
        """The frames of each streaming job (``protocol.StreamOutput``/``StreamExit``), by stream id."""
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._probes: set[asyncio.Task[None]] = set()
        self.heard_at = 0.0
        """``time.monotonic()`` when the agent last sent anything."""

    @property
    def connected(self) -> bool:
        return self._open() is not None

    def _open(self) -> _Connection | None:
        """The connection, if it is up."""
        return self._conn if self._conn is not None and self._conn.open else None

    async def _ensure(self) -> _Connection:
        if (conn := self._open()) is not None:
            return conn
        async with self._connect_lock:
            if (conn := self._open()) is not None:
                return conn
            loop = asyncio.get_running_loop()
            new = _Connection(self._deliver, lambda: self._lost(new))
            try:
                await loop.create_unix_connection(lambda: new, str(self.socket_path))
            except OSError as exc:
                raise UnavailableError(f"guest agent socket unavailable: {exc.strerror or exc}") from exc
            self._conn = new
            return new

    def _deliver(self, msg: dict[str, Any]) -> None:
        self.heard_at = time.monotonic()
        if "event" in msg:
            queue = self._streams.get(str(msg.get("stream")))
            if queue is not None:
                queue.put_nowait(msg)
            return
        fut, _ = self._pending.pop(msg.get("id", -1), (None, None))
        if fut is not None and not fut.done():
            fut.set_result(msg)
        self._note_agent(msg.get("agent"))

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
            self._fail_pending(UnavailableError("connection to guest agent lost"))

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
        if (conn := self._open()) is not None:
            conn.write(protocol.encode({"op": op, **args}))

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
        conn = await self._ensure()
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[rid] = (fut, self.agent_id)
        expiry = loop.call_at(deadline, _settle, fut, TimeoutError())
        probe = None if op == Op.PING else loop.call_later(PROBE_S, self._start_probe, op, fut)
        try:
            conn.write(protocol.encode({"id": rid, "op": op, **args}))
            await conn.drain(deadline)
            reply = await fut
        except TimeoutError as exc:
            raise GuestTimeoutError(f"guest agent did not answer {op} within {timeout:.1f}s") from exc
        except OSError as exc:
            raise UnavailableError(f"guest agent connection failed: {exc}") from exc
        finally:
            expiry.cancel()
            if probe is not None:
                probe.cancel()
            self._pending.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: an outcome that arrived while we gave up must not be reported
            else:
                fut.cancel()  # the probe, if one runs, stops
        if not reply.get("ok"):
            message = str(reply.get("error") or "guest agent error")
            kind = reply.get("kind")
            if kind in _KINDS:
                raise _KINDS[kind](message)
            raise UnavailableError(f"guest agent: {message}")
        return reply

    def _start_probe(self, op: Op, fut: asyncio.Future[dict[str, Any]]) -> None:
        task = asyncio.get_running_loop().create_task(self._probe(op, fut))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, op: Op, fut: asyncio.Future[dict[str, Any]]) -> None:
        """A call's reply is long in coming (``PROBE_S``): ping the agent, every ``PROBE_S`` while the call
        waits, and fail the call once ``PROBE_MISSES`` pings in a row went unanswered."""
        misses = 0
        while not fut.done():
            try:
                await self.call(Op.PING, PROBE_S)
                misses = 0
            except GuestTimeoutError:
                misses += 1
                if misses >= PROBE_MISSES:
                    _settle(
                        fut,
                        UnavailableError(
                            f"the guest agent stopped answering ({PROBE_MISSES} pings unanswered) during {op}"
                        ),
                    )
                    return
            except SheeshError:
                return  # no connection: the call has failed with it
            if not fut.done():
                await asyncio.wait([fut], timeout=PROBE_S)

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
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        for task in list(self._probes):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._fail_pending(UnavailableError("guest client closed"))


def _settle(fut: asyncio.Future[dict[str, Any]], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
