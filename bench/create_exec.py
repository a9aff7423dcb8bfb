"""Benchmark: cold create -> first exec latency, and exec round trip p50/p99 through the HTTP API, next to its
floor: the guest agent's own exec path (warm shells, run_exec) timed inside the guest by a Python process there.

Starts its own `sheesh serve` (temp data dir, the built-in image) and prints numbers; not a test.
Usage: .venv/bin/python bench/create_exec.py [--creates 3] [--execs 200]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time

import httpx
from _common import percentile, running_server

BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"]}
GUEST_FLOOR = """
import json, sys, time
sys.path.insert(0, "/opt/sheesh")
from sheesh.guest.execution import RunConfig, WarmShells, run_exec
config = RunConfig(uid=None, gid=None)
shells = WarmShells(config)
times = {"b2b": [], "gaps": []}
time.sleep(3)  # the pool is full
for label, n, gap in (("b2b", %(n)d, 0.0), ("gaps", %(gaps)d, 0.3)):
    for _ in range(n):
        time.sleep(gap)
        t0 = time.perf_counter()
        assert run_exec(config, {"cmd": "true"}, shells)["exit_code"] == 0
        times[label].append(time.perf_counter() - t0)
print(json.dumps(times))
"""


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
        script = GUEST_FLOOR % {"n": min(60, args.execs), "gaps": min(30, args.execs)}
        floor_cmd = {"cmd": f"python3 -c {shlex.quote(script)}", "timeoutMs": 600000}
        out = c.post(f"/v1/vms/{vms[-1]}/exec", json=floor_cmd, timeout=700).raise_for_status().json()
        floors = json.loads(out["stdout"])
        for vm in vms:
            c.delete(f"/v1/vms/{vm}").raise_for_status()
    print(
        f"cold create -> first exec (boot path, n={len(firsts)}): "
        f"p50 {statistics.median(firsts) * 1000:.0f} ms, max {max(firsts) * 1000:.0f} ms"
    )
    for label, values, floor in (("back to back", rtts, floors["b2b"]), ("with 300 ms gaps", gapped, floors["gaps"])):
        p50, floor_p50 = percentile(values, 0.5), percentile(floor, 0.5)
        print(
            f"exec round trip `true` {label} (n={len(values)}): p50 {p50 * 1000:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.1f} ms (p99/p50 {percentile(values, 0.99) / p50:.1f}); "
            f"floor (the agent's exec path run inside the guest, no host) p50 {floor_p50 * 1000:.1f} ms, "
            f"p99 {percentile(floor, 0.99) * 1000:.1f} ms; ratio {p50 / floor_p50:.2f}"
        )


if __name__ == "__main__":
    main()
