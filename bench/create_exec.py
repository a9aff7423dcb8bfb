"""Benchmark: cold create -> first exec latency, and exec round trip p50/p99 through the HTTP API, next to its
floor: the guest agent's own exec path (warm shells, run_exec) timed inside the guest by a Python process there.

Two floors, both measured in the same run on the same VM:
- the agent's floor: run as root over SSH (the VM is a rerobots instance), with the agent's exec path as the agent
  runs it: in the agent's cgroup, shells as uid 1000 through sheesh-runas, one job cgroup each. Only the host
  round trip (API, node, virtio-serial, the agent's request handling) is left out. The ratio is taken to it.
  One process stays up in the guest; blocks of its execs alternate with blocks of round trips (``--rounds``), so
  the machine's drift over the minutes of a run falls on both alike.
- the user-level floor (as in earlier runs): the same code run by an exec as uid 1000, which can neither switch
  users nor make cgroups, so its shells skip both: a lower bound the agent cannot reach.

Starts its own `sheesh serve` (temp data dir, the built-in image) and prints numbers; not a test.
Usage: .venv/bin/python bench/create_exec.py [--creates 3] [--execs 200] [--gapped 60] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _common import breakdown, exec_times, percentile, rerobots_instance, round_trips, running_server, ssh_argv

BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"]}
GUEST_FLOOR = """
import json, os, sys, time
sys.path.insert(0, "/opt/sheesh")
from sheesh.guest.cgroups import ExecCgroups
from sheesh.guest.execution import RunConfig, WarmShells, run_exec
if os.geteuid() == 0:  # the agent's floor: where and as the agent runs, with its cgroups and user switch
    with open("/sys/fs/cgroup/sheesh-agent/cgroup.procs", "w") as fh:
        fh.write(str(os.getpid()))
    with open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("-1000")
    config = RunConfig()
    shells = WarmShells(config, cgroups=ExecCgroups())
else:
    config = RunConfig(uid=None, gid=None)
    shells = WarmShells(config)
time.sleep(3)  # the pool is full
print("ready", flush=True)
while line := sys.stdin.readline():  # "<gap_s> <n>": n execs of `true`, each after gap_s idle; their times
    gap_s, n = float(line.split()[0]), int(line.split()[1])
    times = []
    for _ in range(n):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        assert run_exec(config, {"cmd": "true"}, shells)["exit_code"] == 0
        times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)
"""
GAP_S = 0.3


class GuestFloor:
    """``GUEST_FLOOR`` run as root over SSH, kept running: blocks of floor execs between blocks of round trips,
    so both are measured in the same minutes of this noisy machine."""

    def __init__(self, key: Path, port: int) -> None:
        argv = ssh_argv(key, port, "python3", "-u", "-c", shlex.quote(GUEST_FLOOR))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, f"the guest's floor process ended ({self.proc.wait()})"
        return line

    def block(self, n: int, gap_s: float) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{gap_s} {n}\n")
        self.proc.stdin.flush()
        times: list[float] = json.loads(self._line())
        return times

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _user_floor(c: httpx.Client, vm: str, execs: int, gapped: int) -> dict[str, list[float]]:
    """The user-level floor: ``GUEST_FLOOR`` run by an exec (uid 1000), one block of each."""
    blocks = shlex.quote(f"0 {execs}\n{GAP_S} {gapped}\n")
    cmd = {"cmd": f"printf {blocks} | python3 -c {shlex.quote(GUEST_FLOOR)}", "timeoutMs": 600000}
    out = c.post(f"/v1/vms/{vm}/exec", json=cmd, timeout=700).raise_for_status().json()
    ready, b2b, gaps = out["stdout"].split("\n")[:3]
    assert ready == "ready", out
    return {"b2b": json.loads(b2b), "gaps": json.loads(gaps)}


def _share(n: int, rounds: int, r: int) -> int:
    """Round ``r``'s part of ``n`` samples split over ``rounds``."""
    return n // rounds + (1 if r < n % rounds else 0)


def _settle(c: httpx.Client, vm: str, timeout_s: float = 120) -> float:
    """Wait until the guest's CPU is idle (a freshly booted guest still starts its warm Deno and shells for a
    while): both the round trips and the floor are then measured in a settled guest. Returns the wait."""
    t0 = time.perf_counter()

    def ticks() -> list[int]:
        out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "head -1 /proc/stat"}).raise_for_status().json()
        return [int(x) for x in out["stdout"].split()[1:]]

    while time.perf_counter() - t0 < timeout_s:
        before = ticks()
        time.sleep(1)
        spent = [b - a for a, b in zip(before, ticks(), strict=True)]
        if spent[3] / max(1, sum(spent)) > 0.95:  # (the 4th field is idle)
            break
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--gapped", type=int, default=60, help="execs with 300 ms gaps (each 300 ms idle is noisy)")
    parser.add_argument("--rounds", type=int, default=6, help="blocks the round trips and the floor alternate in")
    args = parser.parse_args()
    with running_server() as server, server.client() as c, tempfile.TemporaryDirectory() as tmp:
        firsts, vms = [], []
        for _ in range(args.creates):
            t0 = time.perf_counter()
            vms.append(c.post("/v1/vms", json=BODY).raise_for_status().json()["id"])
            c.post(f"/v1/vms/{vms[-1]}/exec", json={"cmd": "true"}).raise_for_status()
            firsts.append(time.perf_counter() - t0)
        for vm in vms:
            c.delete(f"/v1/vms/{vm}").raise_for_status()
        info = rerobots_instance(c, Path(tmp) / "key")
        assert info["status"] == "READY", info
        vm, port = str(info["vmId"]), int(info["fwd"]["port"])
        settled_s = _settle(c, vm)
        rtts: list[float] = []
        gapped: list[float] = []
        reads: list[float] = []
        floors: dict[str, list[float]] = {"b2b": [], "gaps": []}
        parts: dict[str, list[dict[str, float]]] = {"b2b": [], "gaps": []}
        floor = GuestFloor(Path(tmp) / "key", port)
        floor_execs = min(60, args.execs)
        for r in range(args.rounds):
            rtts += exec_times(c, vm, _share(args.execs, args.rounds, r), 0.0, parts["b2b"])
            floors["b2b"] += floor.block(_share(floor_execs, args.rounds, r), 0.0)
            gapped += exec_times(c, vm, _share(args.gapped, args.rounds, r), GAP_S, parts["gaps"])
            # the VM read: the API, its key check and the store, no guest
            reads += round_trips(_share(args.gapped, args.rounds, r), GAP_S, lambda: c.get(f"/v1/vms/{vm}"))
            floors["gaps"] += floor.block(_share(args.gapped, args.rounds, r), GAP_S)
        floor.close()
        user_floors = _user_floor(c, vm, floor_execs, args.gapped)
    print(
        f"cold create -> first exec (boot path, n={len(firsts)}): "
        f"p50 {statistics.median(firsts) * 1000:.0f} ms, max {max(firsts) * 1000:.0f} ms; "
        f"round trips on a rerobots instance's VM, its guest settled (CPU idle) after {settled_s:.0f} s; "
        f"round trips and the agent's floor alternate in {args.rounds} rounds"
    )
    for label, values, key in (("back to back", rtts, "b2b"), ("with 300 ms gaps", gapped, "gaps")):
        p50, floor_p50, user_p50 = (percentile(v, 0.5) for v in (values, floors[key], user_floors[key]))
        print(
            f"exec round trip `true` {label} (n={len(values)}): p50 {p50 * 1000:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.1f} ms (p99/p50 {percentile(values, 0.99) / p50:.1f}); "
            f"floor (the agent's exec path run inside the guest as the agent runs it, no host) p50 "
            f"{floor_p50 * 1000:.1f} ms, p99 {percentile(floors[key], 0.99) * 1000:.1f} ms; ratio {p50 / floor_p50:.2f}"
            f"; user-level floor (no user switch, no cgroups) p50 {user_p50 * 1000:.1f} ms, ratio {p50 / user_p50:.2f}"
        )
        own_p50 = percentile([p["guest"] for p in parts[key]], 0.5) / 1000
        print(
            f"  where it went (Server-Timing of the same requests, p50 of each part): {breakdown(parts[key])}; "
            f"the round trip is {p50 / own_p50:.2f} x the agent's own time for the same requests"
        )
    read_p50, rest_s = percentile(reads, 0.5), percentile(gapped, 0.5) - percentile(reads, 0.5)
    print(
        f"GET /v1/vms/:id with 300 ms gaps (n={len(reads)}, in the same rounds: the API's share of a request, no "
        f"guest) p50 {read_p50 * 1000:.1f} ms; the gapped exec's p50 beyond it {rest_s * 1000:.1f} ms, "
        f"{rest_s / percentile(floors['gaps'], 0.5):.2f} x the floor"
    )


if __name__ == "__main__":
    main()
