"""Benchmark: run-ts latency of `console.log(2+2)` through the HTTP API (one VM, n runs). Prints numbers.

Usage: .venv/bin/python bench/run_ts.py [--runs 20] [--mem 512]
"""

from __future__ import annotations

import argparse
import time

from _common import percentile, running_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mem", type=int, default=512)
    args = parser.parse_args()
    with running_server() as server, server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": args.mem, "allowIps": []}).raise_for_status().json()["id"]
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            r = c.post(f"/v1/vms/{vm}/run-ts", json={"code": "console.log(2 + 2)"}).raise_for_status()
            times.append(time.perf_counter() - t0)
            assert r.json()["stdout"] == "4\n", r.text
        c.delete(f"/v1/vms/{vm}").raise_for_status()
    print(
        f"run-ts console.log(2+2) (n={len(times)}, {args.mem} MiB VM): min {min(times) * 1000:.0f} ms, "
        f"p50 {percentile(times, 0.5) * 1000:.0f} ms, p99 {percentile(times, 0.99) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
