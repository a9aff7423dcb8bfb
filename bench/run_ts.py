"""Benchmark: run-ts (Deno) and run-js (Node.js) latency of `console.log(2+2)` through the HTTP API, each next
to its floor measured in the same VM and run: the same program started inside the guest by a shell (what the
interpreter's own start-up costs there), and the ratio. Runs are timed first in a fresh VM, then with gaps
(run-ts: the warm Deno started after a run is ready), then back to back. Prints numbers.

Usage: .venv/bin/python bench/run_ts.py [--runs 10] [--mem 512] [--gap 8]
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


def _runs(c: httpx.Client, vm: str, endpoint: str, n: int, gap_s: float) -> list[float]:
    times = []
    for _ in range(n):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        r = c.post(f"/v1/vms/{vm}/{endpoint}", json={"code": "console.log(2 + 2)"}).raise_for_status()
        times.append(time.perf_counter() - t0)
        assert r.json()["stdout"] == "4\n", r.text
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mem", type=int, default=512)
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between runs (a warm Deno starts meanwhile)")
    args = parser.parse_args()
    results = {}
    with running_server() as server, server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": args.mem, "allowIps": []}).raise_for_status().json()["id"]
        for endpoint, floor_cmd in FLOOR.items():
            floors = [in_guest_ms(c, vm, floor_cmd) for _ in range(args.runs)]
            first = _runs(c, vm, endpoint, 1, 0)[0]
            gapped = _runs(c, vm, endpoint, args.runs, args.gap)
            b2b = _runs(c, vm, endpoint, args.runs, 0)
            results[endpoint] = (first, gapped, b2b, floors)
        c.delete(f"/v1/vms/{vm}").raise_for_status()
    for endpoint, (first, gapped, b2b, floors) in results.items():
        floor = percentile(floors, 0.5)
        print(
            f"{endpoint} console.log(2+2) ({args.mem} MiB VM); floor (the same program started in the guest by a "
            f"shell) p50 {floor * 1000:.0f} ms; first run in the VM {first * 1000:.0f} ms ({first / floor:.2f}x)"
        )
        for label, times in ((f"{args.gap:g} s apart", gapped), ("back to back", b2b)):
            p50 = percentile(times, 0.5)
            print(
                f"  {label} (n={len(times)}): p50 {p50 * 1000:.0f} ms, p99 {percentile(times, 0.99) * 1000:.0f} ms; "
                f"ratio to floor {p50 / floor:.2f}"
            )


if __name__ == "__main__":
    main()
