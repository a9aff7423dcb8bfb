"""Sliding-window rate limiting per (bucket, identity): in memory (one process), in PostgreSQL or in Redis (shared
by replicas)."""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sheesh.store.repo import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    """Seconds until a slot frees up (0 when allowed)."""
    reset_in_s: float = 0.0
    """Seconds until the oldest counted request leaves the window (the budget is whole again by then)."""


def _decision(limit: int, window: float, now: float, *, allowed: bool, count: int, oldest: float) -> Decision:
    """The answer of every limiter: whether the hit was counted, ``count`` hits in the window now, the oldest at
    ``oldest``."""
    reset = max(0.0, oldest + window - now)
    if not allowed:
        return Decision(False, limit, 0, max(1, math.ceil(reset)), reset)
    return Decision(True, limit, limit - count, 0, reset)


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
                return _decision(limit, window, now, allowed=False, count=len(hits), oldest=hits[0])
            hits.append(now)
            return _decision(limit, window, now, allowed=True, count=len(hits), oldest=hits[0])

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
        return _decision(limit, window, now, allowed=allowed, count=count, oldest=oldest)


_SLIDING_WINDOW_LUA = """
local key, now, window, limit, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if count >= limit then return {0, count, oldest[2]} end
redis.call('ZADD', key, now, member)
redis.call('PEXPIRE', key, math.ceil(window * 1000))
if count == 0 then return {1, 1, ARGV[1]} end
return {1, count + 1, oldest[2]}
"""
"""One hit, atomically: drop hits older than the window, refuse at the limit, else add this one."""


class RedisRateLimiter:
    """``RateLimiter`` counting in Redis (``SHEESH_REDIS_URL``): a sorted set of hit times per key, updated by one
    Lua script, so every replica shares every budget. When Redis cannot be reached the request is let through
    (logged): the limiter never takes the API down."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self._redis.register_script(_SLIDING_WINDOW_LUA)
        self._clock = clock
        self._errors = redis.RedisError

    def hit(self, bucket: str, identity: str, limit: int, window: float = 60.0) -> Decision:
        now = self._clock()
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        try:
            allowed, count, oldest = self._script(
                keys=[f"sheesh:rate:{bucket}|{identity}"], args=[now, window, limit, member]
            )
        except self._errors as exc:
            log.warning("rate limiter: Redis unavailable (%s): request let through", exc)
            return Decision(True, limit, limit - 1, 0, window)
        return _decision(limit, window, now, allowed=bool(int(allowed)), count=int(count), oldest=float(oldest))

    def close(self) -> None:
        self._redis.close()


Limiter = RateLimiter | SharedRateLimiter | RedisRateLimiter
