"""Benchmark: rerobots instances. POST /new -> READY and -> first SSH command, next to the floor measured in the
same run: a plain VM of the same shape, POST /v1/vms -> first exec (both restored from the template
snapshot). Also SSH `true` round trips on a READY instance next to exec `true` round trips.

Starts its own `sheesh serve` (networking on: SSH goes through the forwarded node port on 127.0.0.1).
Usage: .venv/bin/python bench/rerobots.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import percentile, rerobots_instance, running_server, ssh_argv

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


def _ssh(key: Path, port: int, command: str) -> bool:
    return subprocess.run(ssh_argv(key, port, command), capture_output=True, timeout=60, check=False).returncode == 0


def _instance(c: httpx.Client, tmp: Path) -> tuple[float, float, dict[str, Any], Path]:
    key = tmp / "key"  # (each round's instance is terminated before the next one starts)
    t0 = time.perf_counter()
    info = rerobots_instance(c, key)
    ready = time.perf_counter() - t0
    while not _ssh(key, info["fwd"]["port"], "true"):
        time.sleep(0.05)
    return ready, time.perf_counter() - t0, info, key


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = {"SHEESH_TEMPLATES": "true", "SHEESH_NETWORK": "on", "SHEESH_DEFAULT_DEPLOYMENTS": "2"}
    with running_server(**env) as server, server.client() as c, tempfile.TemporaryDirectory() as tmp:
        # warm-up: the first VM of the shape boots and builds the template
        warm = c.post("/v1/vms", json=VM).raise_for_status().json()["id"]
        c.delete(f"/v1/vms/{warm}").raise_for_status()
        time.sleep(15)
        floors, readies, sshes = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            vm = c.post("/v1/vms", json=VM).raise_for_status().json()
            c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).raise_for_status()
            floors.append(time.perf_counter() - t0)
            c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
            ready, first_ssh, info, key = _instance(c, Path(tmp))
            readies.append(ready)
            sshes.append(first_ssh)
            c.post(f"/terminate/{info['id']}").raise_for_status()
            while c.get(f"/instance/{info['id']}").json()["status"] != "TERMINATED":
                time.sleep(0.05)
        ready, _, info, key = _instance(c, Path(tmp))
        ssh_rtts, exec_rtts = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            assert _ssh(key, info["fwd"]["port"], "true")
            ssh_rtts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.post(f"/v1/vms/{info['vmId']}/exec", json={"cmd": "true"}).raise_for_status()
            exec_rtts.append(time.perf_counter() - t0)
        c.post(f"/terminate/{info['id']}").raise_for_status()
    floor = statistics.median(floors)
    print(f"floor: POST /v1/vms -> first exec (template restore, n={len(floors)}): p50 {floor * 1000:.0f} ms")
    for label, values in (("POST /new -> READY", readies), ("POST /new -> first SSH `true` done", sshes)):
        p50 = statistics.median(values)
        worst_ms = max(values) * 1000
        print(f"{label} (n={len(values)}): p50 {p50 * 1000:.0f} ms, max {worst_ms:.0f} ms, {p50 / floor:.2f}x floor")
    ssh50, exec50 = percentile(ssh_rtts, 0.5), percentile(exec_rtts, 0.5)
    print(f"SSH `true` round trip (new connection each, n=10): p50 {ssh50 * 1000:.0f} ms")
    print(f"floor: exec `true` round trip on the same VM (n=10): p50 {exec50 * 1000:.0f} ms ({ssh50 / exec50:.1f}x)")


if __name__ == "__main__":
    main()
