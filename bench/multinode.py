"""Benchmark: creates across two `sheesh node` hosts next to their floor, the same creates on the control plane's
embedded node alone, in the same run. Both from warm per-node templates; creates are sent `--parallel` at a
time. Prints the spread over the nodes and create latency p50/p99 of both. Then the exec round trip of `true` on
a VM of a `sheesh node` host next to its floor, the same on a VM of the embedded node (no node hop).
Usage: .venv/bin/python bench/multinode.py [--n 12] [--parallel 2] [--vmm qemu|fake] [--execs 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import exec_times, percentile, running_server
from tests.server import NodeProcess, ServerProcess, nodes_by_name, running_nodes, wait_for

VM = {"cpu": 1, "memMb": 256, "allowIps": []}


def warm(c: httpx.Client, node: str, timeout_s: float = 300) -> None:
    """Create (and delete) VMs until one on ``node`` is served from its template."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        vm = c.post("/v1/vms", json=VM).json()
        c.delete(f"/v1/vms/{vm['id']}")
        if vm["node"] == node and vm["provisionMode"] == "snapshot":
            return
        time.sleep(1)
    raise SystemExit(f"no template on {node} after {timeout_s:.0f} s")


def creates(c: httpx.Client, n: int, parallel: int) -> tuple[list[float], Counter[str]]:
    def one(_: int) -> tuple[float, str, str]:
        t0 = time.perf_counter()
        r = c.post("/v1/vms", json=VM)
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["node"], r.json()["id"]

    with ThreadPoolExecutor(parallel) as pool:
        made = list(pool.map(one, range(n)))
    for _, _, vm_id in made:
        c.delete(f"/v1/vms/{vm_id}").raise_for_status()
    return [s for s, _, _ in made], Counter(node for _, node, _ in made)


def line(what: str, values: list[float]) -> str:
    p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
    return f"{what}: p50 {p50:.1f} ms, p99 {p99:.1f} ms (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--vmm", default="qemu")
    parser.add_argument("--execs", type=int, default=100)
    args = parser.parse_args()
    env = {"SHEESH_VMM": args.vmm, "SHEESH_NETWORK": "off", "SHEESH_TEMPLATES": "true"}
    with running_server(**env) as srv, srv.client(timeout=300) as c, tempfile.TemporaryDirectory() as tmp:
        try:
            run(c, srv, args, Path(tmp))
        except httpx.HTTPStatusError:
            print(srv.log.read_text()[-6000:])
            raise


def run(c: httpx.Client, srv: ServerProcess, args: argparse.Namespace, tmp: Path) -> None:
    """The two measurements, then the figures."""
    warm(c, "local")
    single, _ = creates(c, args.n, args.parallel)
    procs = []
    for name in ("n1", "n2"):
        token = c.post("/v1/nodes", json={"name": name}).json()["token"]
        node_env = {"SHEESH_VMM": args.vmm, "SHEESH_NETWORK": "off"}
        image_dir = Path(srv.env["SHEESH_IMAGE_DIR"])
        procs.append(NodeProcess(tmp / name, image_dir, control_url=srv.url, name=name, token=token, **node_env))
    with running_nodes(procs):
        ready = {"local", "n1", "n2"}
        wait_for(
            "the nodes to report",
            lambda: {n["name"] for n in nodes_by_name(c).values() if n["state"] == "READY"} == ready,
            30,
        )
        c.post("/v1/nodes/local/drain").raise_for_status()
        for name, other in (("n1", "n2"), ("n2", "n1")):
            c.post(f"/v1/nodes/{other}/drain").raise_for_status()
            warm(c, name)
            c.post(f"/v1/nodes/{other}/undrain").raise_for_status()
        multi, spread = creates(c, args.n, args.parallel)
        c.post("/v1/nodes/n2/drain").raise_for_status()
        remote = c.post("/v1/vms", json=VM).raise_for_status().json()
        c.post("/v1/nodes/local/undrain").raise_for_status()
        c.post("/v1/nodes/n1/drain").raise_for_status()
        local = c.post("/v1/vms", json=VM).raise_for_status().json()
        assert (remote["node"], local["node"]) == ("n1", "local"), (remote["node"], local["node"])
        remote_execs, local_execs = (exec_times(c, vm["id"], 1 + args.execs)[1:] for vm in (remote, local))
    print(f"VMM {args.vmm}, {args.parallel} creates at a time, from warm templates")
    print(line("floor: create -> RUNNING on the embedded node alone", single))
    print(line("create -> RUNNING across two sheesh node hosts", multi))
    print(f"spread: {dict(sorted(spread.items()))}")
    ratio = percentile(multi, 0.5) / percentile(single, 0.5)
    print(f"ratio p50 two nodes / one node: {ratio:.2f}x")
    print(line("floor: exec round trip `true` on a VM of the embedded node", local_execs))
    print(line("exec round trip `true` on a VM of a sheesh node host", remote_execs))
    print(f"ratio p50 remote / embedded: {percentile(remote_execs, 0.5) / percentile(local_execs, 0.5):.2f}x")


if __name__ == "__main__":
    main()
