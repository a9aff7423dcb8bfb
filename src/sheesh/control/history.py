"""The VMs' execution history, written behind the calls it records.

An exec's history entry is an insert, a prune of the VM's oldest entries and a commit: 1.2 ms of a 4.7 ms
exec on SQLite (2.4 ms next to a busy QEMU), more on a remote PostgreSQL. ``ExecHistory`` writes entries on a
thread of its own, so an exec's answer does not wait for its entry and the event loop does not block on the
database. Whatever reads the history or removes a VM's entries flushes first: history read after an answer
holds that answer's entry (read through another replica, once written: milliseconds later).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

from sheesh.models import ExecKind, ExecLog
from sheesh.store.errors import StoreError
from sheesh.store.repo import Store

log = logging.getLogger(__name__)

EXEC_LOG_KEEP = 200
"""Execution history entries kept per VM (the oldest go first)."""
FLUSH_TIMEOUT_S = 30.0
"""A flush gives up after this long (the database is stuck; readers then see what is written)."""


class ExecHistory:
    """Queues history entries and writes them in order on one thread, started with the first entry. An entry
    of a VM deleted meanwhile is dropped; a database error drops the entry (logged), never the writer."""

    def __init__(self, store: Store, keep: int = EXEC_LOG_KEEP) -> None:
        self.store = store
        self.keep = keep
        self._queue: deque[ExecLog] = deque()
        self._cond = threading.Condition()
        self._added = 0
        """Entries queued so far; those written are the ones no longer queued (``_written``)."""
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, entry: ExecLog) -> None:
        """Queue ``entry``; returns at once (after ``close``, writes it here). Called on an event loop, the
        writer starts on it once the loop's current step is over: after the answer the call was part of is
        sent, not competing with it for the interpreter."""
        with self._cond:
            closed = self._closed
            if not closed:
                self._queue.append(entry)
                self._added += 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write_all, name="exec-history", daemon=True)
                    self._thread.start()
        if closed:
            self._write(entry)
            return
        try:
            asyncio.get_running_loop().call_soon(self._wake)
        except RuntimeError:
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every entry queued before this call is in the store."""
        with self._cond:
            target = self._added
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._written() >= target, FLUSH_TIMEOUT_S)

    def _written(self) -> int:
        return self._added - len(self._queue)

    def list(self, vm_id: str, kind: ExecKind | None, limit: int) -> list[ExecLog]:
        """The VM's newest entries first (of ``kind`` when given), the queued ones included."""
        self.flush()
        return self.store.list_exec_logs(vm_id, kind, limit)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(FLUSH_TIMEOUT_S)

    def _write_all(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                entry = self._queue[0]
            self._write(entry)
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def _write(self, entry: ExecLog) -> None:
        try:
            if self.store.get_vm(entry.vm_id) is not None:
                self.store.add_exec_log(entry, self.keep)
        except StoreError as exc:
            log.warning("execution history entry of VM %s not written: %s", entry.vm_id, exc)
        except Exception:  # the writer outlives anything one entry does
            log.exception("execution history entry of VM %s not written", entry.vm_id)
