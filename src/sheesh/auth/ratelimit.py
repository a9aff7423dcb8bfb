"""Sliding-window rate limiting per (bucket, identity): in memory (one process) or in the store (replicas)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sheesh.store.repo import Store


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    """Seconds until a slot frees up (0 when allowed)."""
    reset_in_s: float = 0.0
    """Seconds until the oldest counted request leaves the window (the budget is whole again by then)."""


class RateLimiter:
    """At most ``limit`` hits per ``window`` seconds for each (bucket, identity); refused hits do not count."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def hit(self, bucket: str, identity: str, limit: int, window: float = 60.0) -> Decision:
        now = self._clock()
        with self._lock:
            self._calls += 1
            if self._calls % 1024 == 0:
                self._prune(now, window)
            hits = self._hits.setdefault((bucket, identity), deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= limit:
                retry = max(1, math.ceil(hits[0] + window - now))
                return Decision(False, limit, 0, retry, hits[0] + window - now)
            hits.append(now)
            return Decision(True, limit, limit - len(hits), 0, hits[0] + window - now)

    def _prune(self, now: float, window: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - window]:
            del self._hits[key]


class SharedRateLimiter:
    """``RateLimiter`` whose hits are counted in the store (PostgreSQL): replicas of the control plane share
    every budget. Clock: epoch seconds (the replicas' clocks must agree, as NTP keeps them)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def hit(self, bucket: str, identity: str, limit: int, window: float = 60.0) -> Decision:
        now = self._clock()
        allowed, count, oldest = self._store.rate_hit(f"{bucket}|{identity}", limit, window, now)
        reset = max(0.0, oldest + window - now)
        if not allowed:
            return Decision(False, limit, 0, max(1, math.ceil(reset)), reset)
        return Decision(True, limit, limit - count, 0, reset)


Limiter = RateLimiter | SharedRateLimiter
