"""Load test on loopback: a real `sheesh serve` (fake VMM) under 10x its allowed request rate."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from tests.server import ServerProcess

LIMIT = 100


def test_limits_hold_under_10x_load(tmp_path: Path) -> None:
    image_dir = Settings().resolved_image_dir()
    ImageBuilder(image_dir).build()
    server = ServerProcess(tmp_path / "data", image_dir, SHEESH_VMM="fake", SHEESH_GLOBAL_RATE_LIMIT=str(LIMIT))
    server.start()
    try:

        def hit(_: int) -> tuple[int, int, int]:
            with httpx.Client(base_url=server.url, headers={"X-API-Key": server.api_key}, timeout=30) as c:
                r = c.get("/v1/vms")
                return r.status_code, int(r.headers["X-RateLimit-Remaining"]), int(r.headers["X-RateLimit-Limit"])

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(hit, range(10 * LIMIT)))  # bounded: 1000 requests
        elapsed = time.monotonic() - started
        ok = [r for r in results if r[0] == 200]
        limited = [r for r in results if r[0] == 429]
        assert elapsed < 60, "the load must arrive within one window"
        assert len(ok) == LIMIT, f"{len(ok)} requests passed a limit of {LIMIT}"
        assert len(limited) == 9 * LIMIT
        assert all(rem < lim == LIMIT for _, rem, lim in results)
        assert sorted(rem for _, rem, _ in ok) == list(range(LIMIT))
        # an anonymous caller is limited by address, independently of the key's exhausted budget
        r = httpx.get(server.url + "/openapi.json")
        assert r.status_code == 200 and int(r.headers["X-RateLimit-Remaining"]) >= LIMIT - 10
    finally:
        server.stop()
