"""Handing the reading of the host's requests to another thread (standard library only).

The agent reads requests on one thread at a time, and an exec runs on the thread that read it (``agent.Reader``):
under emulation, waking a worker thread for it cost an exec ~1 ms after the guest was idle. While such a job
waits, it watches the host connection (``current().fd``); when the host sends more, or the job is about to block
for long, ``Handoff.fire`` lets another thread go on reading, and the job's thread stops reading once it answered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class Handoff:
    """The reading a job's thread may hand over: ``fd`` is the host connection, ``start`` makes another thread
    read from it."""

    def __init__(self, fd: int, start: Callable[[], object]) -> None:
        self.fd = fd
        self._start = start
        self.fired = False

    def fire(self) -> None:
        """Let another thread read (once)."""
        if not self.fired:
            self.fired = True
            self._start()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Jobs run on this thread in this block may hand reading over (``current``)."""
        _local.current = self
        try:
            yield
        finally:
            _local.current = None


_local = threading.local()


def current() -> Handoff | None:
    """The reading this thread may still hand over, if it reads the host's requests."""
    handoff: Handoff | None = getattr(_local, "current", None)
    return None if handoff is None or handoff.fired else handoff


def release() -> None:
    """This thread is about to block for long: hand its reading over, if it reads."""
    if (handoff := current()) is not None:
        handoff.fire()
