"""Benchmark: run-ts (Deno) and run-js (Node.js) latency of `console.log(2+2)` through the HTTP API, each next
to its floor measured in the same VM and run: the same program started inside the guest by a shell (what the
interpreter's own start-up costs there), and the ratio. Prints numbers.

Usage: .venv/bin/python bench/run_ts.py [--runs 20] [--mem 512]
"""

from __future__ import annotations

import argparse
import time

import httpx
from _common import percentile, running_server

FLOOR = {
    "run-ts": "printf 'console.log(2 + 2)' > /tmp/b.ts && deno run --no-prompt /tmp/b.ts",
    "run-js": "node -e 'console.log(2 + 2)'",
}


def in_guest_ms(c: httpx.Client, vm: str, cmd: str) -> float:
    """Wall time of ``cmd`` measured by the guest's own clock (no host round trip)."""
    timed = f"s=$(date +%s%N); {cmd} >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
    out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": timed, "timeoutMs": 60000}).raise_for_status().json()
    return int(out["stdout"].strip()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mem", type=int, default=512)
    args = parser.parse_args()
    results = {}
    with running_server() as server, server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": args.mem, "allowIps": []}).raise_for_status().json()["id"]
        for endpoint, floor_cmd in FLOOR.items():
            times, floors = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                r = c.post(f"/v1/vms/{vm}/{endpoint}", json={"code": "console.log(2 + 2)"}).raise_for_status()
                times.append(time.perf_counter() - t0)
                assert r.json()["stdout"] == "4\n", r.text
                floors.append(in_guest_ms(c, vm, floor_cmd))
            results[endpoint] = (times, floors)
        c.delete(f"/v1/vms/{vm}").raise_for_status()
    for endpoint, (times, floors) in results.items():
        p50, floor = percentile(times, 0.5), percentile(floors, 0.5)
        print(
            f"{endpoint} console.log(2+2) (n={len(times)}, {args.mem} MiB VM): p50 {p50 * 1000:.0f} ms, "
            f"p99 {percentile(times, 0.99) * 1000:.0f} ms; floor (same program started in the guest) "
            f"p50 {floor * 1000:.0f} ms; ratio {p50 / floor:.2f}"
        )


if __name__ == "__main__":
    main()
