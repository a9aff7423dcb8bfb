"""Benchmark: cold create -> first exec latency, and exec round trip p50/p99 through the HTTP API, next to its
floor: the guest agent's own exec path (warm shells, run_exec) timed inside the guest by a Python process there.

Two floors, both measured in the same run on the same VM:
- the agent's floor: run as root over SSH (the VM is a rerobots instance), with the agent's exec path as the agent
  runs it: in the agent's cgroup, shells as uid 1000 through sheesh-runas, one job cgroup each. Only the host
  round trip (API, node, virtio-serial, the agent's request handling) is left out. The ratio is taken to it.
- the user-level floor (as in earlier runs): the same code run by an exec as uid 1000, which can neither switch
  users nor make cgroups, so its shells skip both: a lower bound the agent cannot reach.

Starts its own `sheesh serve` (temp data dir, the built-in image) and prints numbers; not a test.
Usage: .venv/bin/python bench/create_exec.py [--creates 3] [--execs 200] [--gapped 60]
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
from _common import exec_times, percentile, rerobots_instance, running_server, ssh_argv

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


def _root_floor(key: Path, port: int, script: str) -> dict[str, list[float]]:
    argv = ssh_argv(key, port, "python3", "-")
    out = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=700, check=True)
    times: dict[str, list[float]] = json.loads(out.stdout)
    return times


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
        rtts = exec_times(c, vm, args.execs, 0.0)
        gapped = exec_times(c, vm, args.gapped, 0.3)
        script = GUEST_FLOOR % {"n": min(60, args.execs), "gaps": args.gapped}
        floors = _root_floor(Path(tmp) / "key", port, script)
        floor_cmd = {"cmd": f"python3 -c {shlex.quote(script)}", "timeoutMs": 600000}
        out = c.post(f"/v1/vms/{vm}/exec", json=floor_cmd, timeout=700).raise_for_status().json()
        user_floors = json.loads(out["stdout"])
    print(
        f"cold create -> first exec (boot path, n={len(firsts)}): "
        f"p50 {statistics.median(firsts) * 1000:.0f} ms, max {max(firsts) * 1000:.0f} ms; "
        f"round trips on a rerobots instance's VM, its guest settled (CPU idle) after {settled_s:.0f} s"
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


if __name__ == "__main__":
    main()
