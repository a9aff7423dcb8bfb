"""A real Redis server owned by a test: the Debian ``redis-server`` binary, no persistence, listening on a
loopback port; stopped by PID."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.server import free_port, stop_process


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("Redis is not installed: run scripts/setup.sh --test-deps")
    folder = Path(tempfile.mkdtemp(prefix="sheesh-redis-"))
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    log = open(folder / "redis.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*argv, "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (folder / "redis.log").read_text()
                time.sleep(0.05)
        client.close()
        yield RedisServer(port, proc)
    finally:
        stop_process(proc, timeout_s=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
