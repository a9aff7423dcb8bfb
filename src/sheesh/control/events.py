"""Event callbacks (rerobots ``eurl``): a JSON POST to a user's URL, retried with backoff, never to a blocked
address (the outbound policy of media downloads: loopback, link-local, the guest network...)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from sheesh.outbound import Network, OutboundError, check_url, pinned_requests, send_first

log = logging.getLogger(__name__)


@dataclass
class EventSender:
    """Delivers events in the background; ``sent`` and ``failed`` count outcomes (for tests and metrics)."""

    blocked: Sequence[Network]
    attempts: int = 4
    first_delay_s: float = 0.5
    timeout_s: float = 10.0
    sent: int = 0
    failed: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @staticmethod
    def check(url: str) -> str:
        """``url`` if it is an absolute http(s) URL, else InvalidInputError (addresses are checked at send time:
        names may resolve differently later)."""
        return check_url(url)

    def send(self, url: str, event: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(url, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, event: dict[str, Any]) -> None:
        delay_s = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                async with httpx.AsyncClient(follow_redirects=False, timeout=self.timeout_s) as client:
                    requests = await pinned_requests(client, url, self.blocked, method="POST", json=event)
                    resp = await send_first(client, requests)
                    await resp.aclose()
                if resp.status_code < 300:
                    self.sent += 1
                    return
                reason = f"HTTP {resp.status_code}"
            except OutboundError as exc:
                log.warning("event for %s not sent: %s", url, exc.message)
                self.failed += 1
                return
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
            log.info("event to %s failed (attempt %d of %d): %s", url, attempt, self.attempts, reason)
            if attempt < self.attempts:
                await asyncio.sleep(delay_s)
                delay_s *= 2
        self.failed += 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
