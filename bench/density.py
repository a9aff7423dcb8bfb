"""Benchmark: density. Creates ``--vms`` VMs of 256 MiB from the shape's template on this host, checks that each
answers an exec, and prints the host memory per VM (PSS of its QEMU process: shared template pages counted
once across the VMs sharing them), their idle CPU, and the time to create all of them; then deletes them.

Each figure comes with its floor measured in the same run: memory next to the VM's own RAM size and to one VM
alone (created first, measured before the others exist); creating all of them next to ``--vms`` times that one
create; idle CPU next to the same VMs paused. The node's memory check is relaxed (SHEESH_MEM_OVERCOMMIT) so
that 100 x 256 MiB fit on a 24 GiB host: untouched guest RAM costs nothing.
Usage: .venv/bin/python bench/density.py [--vms 100] [--window-s 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from _common import percentile, running_server
from idle import BODY, idle_share, qemu_pids, wait_template


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


def _create(c: httpx.Client) -> tuple[str, float]:
    t0 = time.perf_counter()
    vm = c.post("/v1/vms", json=BODY).raise_for_status().json()
    return vm["id"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--window-s", type=float, default=20)
    args = parser.parse_args()
    env = {"SHEESH_TEMPLATES": "true", "SHEESH_MEM_OVERCOMMIT": "4"}
    with running_server(**env) as server, server.client(timeout=300) as c:
        wait_template(c)
        first, one_s = _create(c)
        c.post(f"/v1/vms/{first}/exec", json={"cmd": "true"}).raise_for_status()
        time.sleep(5)
        alone_mb = pss_mb(qemu_pids(server.data_dir)[0])
        vms, creates = [first], []
        t0 = time.perf_counter()
        for _ in range(args.vms - 1):
            vm, took = _create(c)
            vms.append(vm)
            creates.append(took)
        all_s = time.perf_counter() - t0 + one_s
        answered = sum(
            c.post(f"/v1/vms/{vm}/exec", json={"cmd": "echo ok"}).json().get("stdout") == "ok\n" for vm in vms
        )
        time.sleep(10)  # the execs' shell refills settle
        pids = qemu_pids(server.data_dir)
        pss = [pss_mb(pid) for pid in pids]
        running = idle_share(pids, args.window_s)
        for vm in vms:
            c.post(f"/v1/vms/{vm}/pause").raise_for_status()
        paused = idle_share(pids, args.window_s)
        for vm in vms:
            c.delete(f"/v1/vms/{vm}")
    print(f"{len(vms)} VMs of {BODY['memMb']} MiB up, {answered} answered exec")
    print(
        f"create all: {all_s:.1f} s (p50 {percentile(creates, 0.5) * 1000:.0f} ms, p99 "
        f"{percentile(creates, 0.99) * 1000:.0f} ms each); floor ({len(vms)} x one create alone, {one_s * 1000:.0f} "
        f"ms): {one_s * len(vms):.1f} s; ratio {all_s / (one_s * len(vms)):.2f}"
    )
    print(
        f"host memory per VM (PSS of its QEMU): p50 {percentile(pss, 0.5):.1f} MB, max {max(pss):.1f} MB, "
        f"total {sum(pss) / 1024:.2f} GB; floor (one VM alone) {alone_mb:.1f} MB; guest RAM {BODY['memMb']} MiB"
    )
    print(
        f"idle CPU per VM: {running:.2f} % of a core; floor (the same VMs paused) {paused:.2f} %; "
        f"all {len(vms)} together {running * len(vms):.0f} % of a core"
    )


if __name__ == "__main__":
    main()
