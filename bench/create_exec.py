"""Benchmark: cold create -> first exec latency, and exec round trip p50/p99 through the HTTP API.

Starts its own `sheesh serve` (temp data dir, the built-in image) and prints numbers; not a test.
Usage: .venv/bin/python bench/create_exec.py [--creates 3] [--execs 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import ServerProcess

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder

BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--execs", type=int, default=200)
    args = parser.parse_args()
    image = ImageBuilder(Settings().resolved_image_dir()).build()
    with tempfile.TemporaryDirectory(prefix="sheesh-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data", image.path.parent.parent).start()
        try:
            with server.client() as c:
                firsts, vm = [], ""
                for _ in range(args.creates):
                    t0 = time.perf_counter()
                    vm = c.post("/v1/vms", json=BODY).raise_for_status().json()["id"]
                    c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
                    firsts.append(time.perf_counter() - t0)
                    if _ < args.creates - 1:
                        c.delete(f"/v1/vms/{vm}").raise_for_status()
                rtts = []
                for _ in range(args.execs):
                    t0 = time.perf_counter()
                    c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
                    rtts.append(time.perf_counter() - t0)
                gapped = []
                for _ in range(min(30, args.execs)):
                    time.sleep(0.3)
                    t0 = time.perf_counter()
                    c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
                    gapped.append(time.perf_counter() - t0)
                c.delete(f"/v1/vms/{vm}").raise_for_status()
        finally:
            server.stop()
            server.kill_vms()
    print(
        f"cold create -> first exec (boot path, n={len(firsts)}): "
        f"p50 {statistics.median(firsts) * 1000:.0f} ms, max {max(firsts) * 1000:.0f} ms"
    )
    print(
        f"exec round trip `true` (n={len(rtts)}): p50 {pct(rtts, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(rtts, 0.99) * 1000:.1f} ms"
    )
    print(
        f"exec round trip `true` with 300 ms gaps (n={len(gapped)}): p50 {pct(gapped, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(gapped, 0.99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
