"""Where password hashing runs: a small pool of worker threads, never the event loop.

argon2 takes tens of milliseconds of CPU per check by design. Run on the event loop, 30-100 concurrent
logins stall every other request for seconds. ``HashPool.run`` moves the whole check (store lookups included)
to at most ``workers`` threads and lets each client address have at most ``per_client`` checks in flight;
more is refused with ``RateLimitedError`` at once, so a flood of logins from one address cannot fill the queue.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from sheesh.errors import RateLimitedError

P = ParamSpec("P")
T = TypeVar("T")


class HashPool:
    def __init__(self, workers: int = 2, per_client: int = 4) -> None:
        self.per_client = per_client
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._in_flight: Counter[str] = Counter()

    async def run(self, client: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a hashing thread.

        :raise RateLimitedError: ``client`` already has ``per_client`` checks running or queued
        """
        if self._in_flight[client] >= self.per_client:
            raise RateLimitedError(f"too many password checks in progress from {client}; retry in 1s", 1)
        self._in_flight[client] += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        finally:
            self._in_flight[client] -= 1
            if not self._in_flight[client]:
                del self._in_flight[client]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
