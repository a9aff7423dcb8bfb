"""Shared by the benchmark scripts: a `sheesh serve` on a temp data dir with the built-in image."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import ServerProcess
from tests.server import running_server as tests_running_server

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from sheesh.servertiming import durations


def ssh_argv(key: Path, port: int, *command: str) -> list[str]:
    """``ssh`` as root to a rerobots instance's forwarded port on 127.0.0.1, with ``key``, running ``command``."""
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    return [*argv, "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", *command]


def rerobots_instance(c: httpx.Client, key: Path) -> dict[str, Any]:
    """Launch a rerobots ``basic_vm`` instance and wait until it is past INIT; its SSH key written to ``key``
    (mode 600). The instance's record (``status``, ``vmId``, ``fwd``: the forwarded SSH port)."""
    launched = c.post("/new/basic_vm", content=b"{}").raise_for_status().json()
    while (info := c.get(f"/instance/{launched['id']}").json())["status"] == "INIT":
        time.sleep(0.01)
    key.write_text(launched["sshkey"])
    key.chmod(0o600)
    record: dict[str, Any] = info
    return record


def round_trips(n: int, gap_s: float, send: Callable[[], httpx.Response]) -> list[float]:
    """Round trips (seconds) of ``n`` requests made by ``send`` (each must succeed), each after ``gap_s`` idle."""
    times = []
    for _ in range(n):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        send().raise_for_status()
        times.append(time.perf_counter() - t0)
    return times


def exec_times(
    c: httpx.Client, vm_id: str, n: int, gap_s: float = 0.0, parts: list[dict[str, float]] | None = None
) -> list[float]:
    """Round trips (seconds) of ``n`` execs of ``true`` on ``vm_id``, each after ``gap_s`` idle; each one's
    ``Server-Timing`` (ms by metric, with ``round_trip``) appended to ``parts``."""

    answers: list[httpx.Response] = []

    def send() -> httpx.Response:
        answers.append(c.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"}))
        return answers[-1]

    times = round_trips(n, gap_s, send)
    if parts is not None:
        for r, t in zip(answers, times, strict=True):
            parts.append({**durations(r.headers.get("server-timing", "")), "round_trip": t * 1000})
    return times


def breakdown(parts: list[dict[str, float]]) -> str:
    """The p50 of each part of the round trips ``exec_times`` timed (``sheesh.api.timing``): the guest agent's
    own (the command's run with it), the channel (the node's call less the agent's), the control plane (less
    the node's call), HTTP and the API around it (the round trip less the control plane's)."""
    spans = {
        "guest agent": [p["guest"] for p in parts],
        "channel": [p["node"] - p["guest"] for p in parts],
        "control plane": [p["exec"] - p["node"] for p in parts],
        "HTTP + API": [p["round_trip"] - p["exec"] for p in parts],
    }
    return ", ".join(f"{name} {percentile(v, 0.5):.2f} ms" for name, v in spans.items())


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
