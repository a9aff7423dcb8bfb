"""Warm spares: VMs restored from a snapshot ahead of need, run once and paused, that a create from that snapshot
claims instead of restoring (the way E2B keeps sandboxes ready; under TCG a fresh restore spends most of its
first 200 ms translating the guest's code again, a spare has done that already).

``WarmPool`` only keeps the books: which spares are ready for which snapshot and machine shape, and one fill
task per kind that brings it back to ``size`` after a create used it. Making, claiming and discarding a spare
are the node agent's (``make`` and ``discard``); a spare is a VM of the node whose id starts with
``SPARE_PREFIX``, so its folder is never taken for a user's VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sheesh.errors import SheeshError
from sheesh.models import VmKind
from sheesh.node.contract import NodeVmSpec

log = logging.getLogger(__name__)
SPARE_PREFIX = ".spare-"
FILL_RETRY_S = 30.0
"""After a spare failed to come up, the next try waits this long (a broken snapshot must not loop)."""

SpareKind = tuple[str, int, int, VmKind]
"""What a spare can stand in for: the snapshot it was restored from and the machine's vCPUs, RAM and kind."""


def kind_of(spec: NodeVmSpec) -> SpareKind | None:
    """The spare kind a create needs (None: it restores no snapshot, no spare fits)."""
    if spec.snapshot_id is None:
        return None
    return (spec.snapshot_id, spec.cpu, spec.mem_mb, spec.kind)


class WarmPool:
    """Up to ``size`` ready spares per kind in use (0: none are made). ``make(spec)`` makes a spare like the VM
    of ``spec`` and returns its id; ``discard(spare_id)`` destroys one."""

    def __init__(
        self,
        size: int,
        make: Callable[[NodeVmSpec], Awaitable[str]],
        discard: Callable[[str], Awaitable[None]],
    ) -> None:
        self.size = size
        self._make = make
        self._discard = discard
        self._ready: dict[SpareKind, list[str]] = {}
        self._fills: dict[SpareKind, asyncio.Task[None]] = {}
        self._failed_at: dict[SpareKind, float] = {}

    def ready(self, snapshot_id: str | None = None) -> list[str]:
        """Ids of the ready spares (of one snapshot)."""
        return [s for kind, spares in self._ready.items() if snapshot_id in (None, kind[0]) for s in spares]

    def take(self, spec: NodeVmSpec) -> str | None:
        """A ready spare that can become the VM of ``spec``, now no longer the pool's; None if there is none."""
        kind = kind_of(spec)
        spares = self._ready.get(kind) if kind is not None else None
        return spares.pop(0) if spares else None

    def want(self, spec: NodeVmSpec) -> None:
        """A VM like ``spec`` was just made: start bringing its kind back to ``size`` spares (in the background)."""
        kind = kind_of(spec)
        if self.size <= 0 or kind is None or kind in self._fills:
            return
        if time.monotonic() - self._failed_at.get(kind, -FILL_RETRY_S) < FILL_RETRY_S:
            return
        self._fills[kind] = asyncio.create_task(self._fill(kind, spec))

    async def _fill(self, kind: SpareKind, spec: NodeVmSpec) -> None:
        try:
            while len(self._ready.get(kind, [])) < self.size:
                started = time.monotonic()
                spare_id = await self._make(spec)
                self._ready.setdefault(kind, []).append(spare_id)
                took_ms = (time.monotonic() - started) * 1000
                log.info("spare %s of snapshot %s ready in %.0f ms", spare_id, kind[0], took_ms)
        except SheeshError as exc:
            self._failed_at[kind] = time.monotonic()
            log.warning("cannot keep a spare of snapshot %s: %s", kind[0], exc.message)
        finally:
            self._fills.pop(kind, None)

    async def drop(self, snapshot_id: str | None = None) -> list[str]:
        """Stop filling and discard the spares of ``snapshot_id`` (None: all); returns their ids."""
        fills = [(k, t) for k, t in self._fills.items() if snapshot_id in (None, k[0])]
        for _, task in fills:
            task.cancel()
        for _, task in fills:
            with contextlib.suppress(BaseException):
                await task
        gone = self.ready(snapshot_id)
        for kind in [k for k in self._ready if snapshot_id in (None, k[0])]:
            del self._ready[kind]
        for spare_id in gone:
            await self._discard(spare_id)
        return gone
