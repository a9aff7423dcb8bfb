"""Benchmark: the host side of VM networking (root). Prints numbers.

Time to create a VM's tap on the bridge, and to apply the whole nftables ruleset for N VMs (each with an
allowlist, 4 firewall rules and 2 port forwards), on a throw-away bridge that is removed afterwards.
Usage: .venv/bin/python bench/network.py [--vms 1 10 100 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from sheesh.models import FirewallAction, FirewallRule, PortForward
from sheesh.node.contract import VmNet
from sheesh.node.network import LinuxNetwork, NetConfig, teardown


def vm(i: int) -> VmNet:
    rules = tuple(FirewallRule(f"10.{i % 250}.{j}.0/24", FirewallAction.ACCEPT) for j in range(3))
    return VmNet(
        vm_id=f"vm-bench{i:06d}",
        ip=f"10.99.{i // 250}.{i % 250 + 2}",
        allow_ips=(f"192.168.{i % 250}.0/24", "10.99.0.1/32"),
        outbound_internet=i % 2 == 0,
        firewall=(*rules, FirewallRule("0.0.0.0/0", FirewallAction.REJECT)),
        ports=(PortForward(22, 30000 + 2 * i), PortForward(80, 30001 + 2 * i)),
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, nargs="+", default=[1, 10, 100, 500])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    assert os.geteuid() == 0, "run as root"
    cfg = NetConfig(f"shbench{os.getpid() % 1000}", "10.99.0.0/16", ("lo",))
    net = LinuxNetwork(cfg)
    try:
        taps = []
        for i in range(10):
            t0 = time.perf_counter()
            await net.add_tap(vm(i))
            taps.append(time.perf_counter() - t0)
        print(
            f"tap on the bridge: median {statistics.median(taps) * 1000:.1f} ms (first, with the bridge: "
            f"{taps[0] * 1000:.1f} ms)"
        )
        for count in args.vms:
            vms = [vm(i) for i in range(count)]
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                await net.apply(vms)
                times.append(time.perf_counter() - t0)
            print(f"ruleset for {count:4d} VMs: median {statistics.median(times) * 1000:.1f} ms")
    finally:
        await teardown(cfg)


if __name__ == "__main__":
    asyncio.run(main())
