"""Benchmark: CPU used by idle VMs (their QEMU processes' ticks over a window), next to its floor.

Creates ``--vms`` VMs from the shape's template, lets them settle, then reads utime+stime of each QEMU
process over ``--window-s``; then again while each VM runs an exec of `sleep` (an agent waiting for a quiet
job should cost what an idle one does). The floor, measured in the same run: the same VMs paused (vCPUs
stopped, so only QEMU's own main loop is left). With ``--auto-pause S`` the server pauses idle VMs itself
(SHEESH_AUTO_PAUSE_S) and the bench also prints what the first exec after the pause costs compared with an exec
on a running VM.
Usage: .venv/bin/python bench/idle.py [--vms 20] [--window-s 30] [--auto-pause 5]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import percentile, running_server
from tests.server import ServerProcess

BODY = {"cpu": 1, "memMb": 256, "allowIps": []}
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def qemu_pids(data_dir: Path) -> list[int]:
    pids = []
    for pidfile in data_dir.glob("vms/*/qemu.pid"):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * TICK_S


def idle_share(pids: list[int], window_s: float) -> float:
    """Percent of one core per VM over the window."""
    before = cpu_s(pids)
    time.sleep(window_s)
    return (cpu_s(pids) - before) / window_s / len(pids) * 100


def wait_template(c: httpx.Client) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        probe = c.post("/v1/vms", json=BODY).raise_for_status().json()
        c.delete(f"/v1/vms/{probe['id']}").raise_for_status()
        if probe["provisionMode"] == "snapshot":
            return
        time.sleep(2)
    raise SystemExit("the template was not ready in 180 s")


def waiting_exec_share(server: ServerProcess, vms: list[str], window_s: float) -> float:
    """Percent of one core per VM over the window while each VM runs an exec of `sleep` (the agent waits for
    it: an agent that polled for the end would show here)."""
    sleep_s = window_s + 8

    def run(vm: str) -> None:
        with server.client(timeout=sleep_s + 60) as c:
            body = {"cmd": f"sleep {sleep_s:.0f}", "timeoutMs": int(sleep_s + 30) * 1000}
            c.post(f"/v1/vms/{vm}/exec", json=body).raise_for_status()

    with ThreadPoolExecutor(len(vms)) as pool:
        done = [pool.submit(run, vm) for vm in vms]
        time.sleep(3)
        share = idle_share(qemu_pids(server.data_dir), window_s)
        for f in done:
            f.result()
    return share


def exec_ms(c: httpx.Client, vm: str) -> float:
    t0 = time.perf_counter()
    c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--auto-pause", type=float, default=0.0)
    args = parser.parse_args()
    env = {"SHEESH_TEMPLATES": "true"}
    if args.auto_pause:
        env["SHEESH_AUTO_PAUSE_S"] = str(args.auto_pause)
    with running_server(**env) as server, server.client(timeout=120) as c:
        wait_template(c)
        vms = [c.post("/v1/vms", json=BODY).raise_for_status().json()["id"] for _ in range(args.vms)]
        for vm in vms:
            c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
        time.sleep(args.settle_s)
        pids = qemu_pids(server.data_dir)
        idle = idle_share(pids, args.window_s)
        resumed: list[float] = []
        warm: list[float] = []
        if args.auto_pause:  # they are paused by now: the first exec resumes each one
            states = [c.get(f"/v1/vms/{vm}").json()["state"] for vm in vms]
            print(f"states after {args.settle_s + args.window_s:.0f} s idle: {sorted(set(states))}")
            resumed = [exec_ms(c, vm) for vm in vms]
            warm = [exec_ms(c, vm) for vm in vms]
        else:
            busy = waiting_exec_share(server, vms, args.window_s)
            for vm in vms:
                c.post(f"/v1/vms/{vm}/pause").raise_for_status()
        floor = idle_share(pids, args.window_s) if not args.auto_pause else idle
        for vm in vms:
            c.delete(f"/v1/vms/{vm}").raise_for_status()
    label = f"auto-pause after {args.auto_pause:g} s" if args.auto_pause else "running"
    print(f"idle CPU per VM ({len(pids)} VMs, {args.window_s:.0f} s, {label}): {idle:.2f} % of a core")
    if not args.auto_pause:
        print(f"floor (the same VMs paused): {floor:.2f} % of a core; ratio {idle / max(floor, 0.001):.1f}")
        print(
            f"CPU per VM while each runs an exec that waits (`sleep`, no output): {busy:.2f} % of a core; "
            f"ratio to idle {busy / max(idle, 0.001):.1f}"
        )
    if resumed:
        print(
            f"exec on an auto-paused VM (resume + exec): p50 {percentile(resumed, 0.5):.0f} ms, "
            f"p99 {percentile(resumed, 0.99):.0f} ms; on a running VM p50 {percentile(warm, 0.5):.0f} ms; "
            f"resume cost p50 {percentile(resumed, 0.5) - percentile(warm, 0.5):.0f} ms"
        )


if __name__ == "__main__":
    main()
