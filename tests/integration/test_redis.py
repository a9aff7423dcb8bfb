"""Rate limits counted in a real Redis server (started by the test): two limiters, as two replicas would hold,
share every budget; the window slides; a Redis that is gone lets requests through; ``sheesh serve`` with
``SHEESH_REDIS_URL`` enforces its per-endpoint limits there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sheesh.auth.ratelimit import RedisRateLimiter
from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from tests.redis_server import RedisServer, running_redis
from tests.server import running_server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def test_two_limiters_share_one_budget_in_redis(redis_server: RedisServer) -> None:
    now = [1000.0]
    a = RedisRateLimiter(redis_server.url, clock=lambda: now[0])
    b = RedisRateLimiter(redis_server.url, clock=lambda: now[0])
    decisions = [(a if i % 2 else b).hit("exec", "user:alice", 5) for i in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[-1].retry_after_s == 60
    assert b.hit("exec", "user:bob", 5).allowed, "each identity its own budget"
    now[0] += 60.5
    assert a.hit("exec", "user:alice", 5).allowed, "the window slid past the first hits"
    a.close()
    b.close()


def test_a_redis_that_is_gone_lets_requests_through() -> None:
    gone = RedisRateLimiter("redis://127.0.0.1:1/0")
    assert gone.hit("global", "ip:127.0.0.1", 1).allowed
    gone.close()


def test_serve_counts_its_limits_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    image_dir = Settings().resolved_image_dir()
    ImageBuilder(image_dir).build()
    limits = json.dumps({"create": 100, "exec": 3})
    env = {"SHEESH_VMM": "fake", "SHEESH_REDIS_URL": redis_server.url, "SHEESH_RATE_LIMITS": limits}
    with running_server(tmp_path / "data", image_dir, **env) as srv, srv.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()["id"]
        codes = [c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        keys = redis.Redis.from_url(redis_server.url).keys("sheesh:rate:exec|user:usr-*")
        assert len(keys) == 1, "the admin's exec budget lives in Redis"
