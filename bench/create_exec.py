"""Benchmark: cold create -> first exec latency, and exec round trip p50/p99 through the HTTP API.

Starts its own `sheesh serve` (temp data dir, the built-in image) and prints numbers; not a test.
Usage: .venv/bin/python bench/create_exec.py [--creates 3] [--execs 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from _common import percentile, running_server

BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"]}


def _exec_times(c: httpx.Client, vm: str, n: int, gap_s: float) -> list[float]:
    times = []
    for _ in range(n):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--execs", type=int, default=200)
    args = parser.parse_args()
    with running_server() as server, server.client() as c:
        firsts, vms = [], []
        for _ in range(args.creates):
            t0 = time.perf_counter()
            vms.append(c.post("/v1/vms", json=BODY).raise_for_status().json()["id"])
            c.post(f"/v1/vms/{vms[-1]}/exec", json={"cmd": "true"}).raise_for_status()
            firsts.append(time.perf_counter() - t0)
        rtts = _exec_times(c, vms[-1], args.execs, 0.0)
        gapped = _exec_times(c, vms[-1], min(30, args.execs), 0.3)
        for vm in vms:
            c.delete(f"/v1/vms/{vm}").raise_for_status()
    print(
        f"cold create -> first exec (boot path, n={len(firsts)}): "
        f"p50 {statistics.median(firsts) * 1000:.0f} ms, max {max(firsts) * 1000:.0f} ms"
    )
    for label, values in (("back to back", rtts), ("with 300 ms gaps", gapped)):
        print(
            f"exec round trip `true` {label} (n={len(values)}): p50 {percentile(values, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
