"""Benchmark: run-ts latency of `console.log(2+2)` through the HTTP API (one VM, n runs). Prints numbers.

Usage: .venv/bin/python bench/run_ts.py [--runs 20]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mem", type=int, default=512)
    args = parser.parse_args()
    image = ImageBuilder(Settings().resolved_image_dir()).build()
    with tempfile.TemporaryDirectory(prefix="sheesh-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data", image.path.parent.parent).start()
        try:
            with server.client() as c:
                body = {"cpu": 1, "memMb": args.mem, "allowIps": []}
                vm = c.post("/v1/vms", json=body).raise_for_status().json()["id"]
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    r = c.post(f"/v1/vms/{vm}/run-ts", json={"code": "console.log(2 + 2)"}).raise_for_status()
                    times.append(time.perf_counter() - t0)
                    assert r.json()["stdout"] == "4\n", r.text
                c.delete(f"/v1/vms/{vm}").raise_for_status()
        finally:
            server.stop()
            server.kill_vms()
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    print(
        f"run-ts console.log(2+2) (n={len(times)}, {args.mem} MiB VM): min {times[0] * 1000:.0f} ms, "
        f"p50 {statistics.median(times) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
