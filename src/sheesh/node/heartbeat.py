"""A standalone node's reports to its control plane: ``POST <control>/v1/nodes/<name>/heartbeat`` every few
seconds with where it listens and its ``NodeStatus`` (capacity, free disk, running VMs), authenticated with the
node's token. The first report registers the node's address; a control plane that is away is retried at the
next beat (the node and its VMs go on meanwhile). ``control_url`` may list several replicas, separated by
commas: each beat goes to the one that last answered, else to the next that does."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from sheesh.node.contract import NodeStatus, to_wire

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Heartbeat:
    control_url: str
    name: str
    token: str
    address: str
    """Where the control plane reaches this node's contract and WebSocket endpoints."""
    port: int
    tls: bool
    public_host: str | None
    region: str | None = None
    status: Callable[[], Awaitable[NodeStatus]]
    interval_s: float = 3.0
    verify: ssl.SSLContext | bool = True
    beats: int = 0
    """Reports the control plane accepted."""
    last_error: str | None = None
    _current: int = 0

    @property
    def urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.control_url.split(",") if u.strip()]

    async def beat(self, http: httpx.AsyncClient) -> None:
        """One report, to the replica that last answered or the next one that does; raises the last replica's
        httpx error (HTTPStatusError when it refuses the report)."""
        urls = self.urls
        for attempt in range(len(urls)):
            base = urls[(self._current + attempt) % len(urls)]
            try:
                await self._beat(http, base)
            except httpx.TransportError:
                if attempt == len(urls) - 1:
                    raise
                continue
            self._current = (self._current + attempt) % len(urls)
            return

    async def _beat(self, http: httpx.AsyncClient, base: str) -> None:
        body = {
            "address": self.address,
            "port": self.port,
            "tls": self.tls,
            "publicHost": self.public_host,
            "region": self.region,
            "status": to_wire(await self.status()),
        }
        url = f"{base}/v1/nodes/{self.name}/heartbeat"
        response = await http.post(url, json=body, headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        self.beats += 1
        if self.last_error is not None:
            log.info("control plane %s accepts this node's reports again", self.control_url)
        self.last_error = None

    async def run(self) -> None:
        """Report forever (until cancelled); failures are logged once each time they change."""
        async with httpx.AsyncClient(timeout=max(2.0, self.interval_s), verify=self.verify) as http:
            while True:
                try:
                    await self.beat(http)
                except (httpx.HTTPError, OSError) as exc:
                    detail = exc.response.text[:200] if isinstance(exc, httpx.HTTPStatusError) else str(exc)
                    error = f"{type(exc).__name__}: {detail}"
                    if error != self.last_error:
                        log.warning("heartbeat to %s failed: %s", self.control_url, error)
                    self.last_error = error
                await asyncio.sleep(self.interval_s)
