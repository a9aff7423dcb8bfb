"""Shared by the benchmark scripts: a `sheesh serve` on a temp data dir with the built-in image."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import ServerProcess
from tests.server import running_server as tests_running_server

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder


def ssh_argv(key: Path, port: int, *command: str) -> list[str]:
    """``ssh`` as root to a rerobots instance's forwarded port on 127.0.0.1, with ``key``, running ``command``."""
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    return [*argv, "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", *command]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def running_server(**env: str) -> Iterator[ServerProcess]:
    """Build (or reuse) the image, start a server (extra ``SHEESH_*`` env), stop it and kill its VMs after."""
    image = ImageBuilder(Settings().resolved_image_dir()).build()
    with tempfile.TemporaryDirectory(prefix="sheesh-bench-") as tmp:
        buckets = ("create", "exec", "run_ts", "run_js", "upload", "download")
        limits = json.dumps(dict.fromkeys(buckets, 100000))
        env = {
            "SHEESH_RATE_LIMITS": limits,
            "SHEESH_GLOBAL_RATE_LIMIT": "0",
            **env,
        }  # measure the system, not the limiter
        with tests_running_server(Path(tmp) / "data", image.path.parent.parent, **env) as server:
            yield server
