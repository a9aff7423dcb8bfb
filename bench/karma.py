"""Benchmark: the karma.run KVM endpoint next to its floor, the plain REST listing of the same records, in the
same run; and the admin export (size and time). Uses the fake VMM (no guests are involved in either).
Usage: .venv/bin/python bench/karma.py [--vms 20] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import percentile, running_server

QUERY = {
    "length": {
        "filter": [
            {"all": {"tag": "vms"}},
            {"function": [["v"], {"equal": [{"field": ["state", {"scope": "v"}]}, "RUNNING"]}]},
        ]
    }
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    with running_server(SHEESH_VMM="fake") as server, server.client() as c:
        for _ in range(args.vms):
            c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).raise_for_status()
        rest, kvm = [], []
        for _ in range(args.n):
            t0 = time.perf_counter()
            c.get("/v1/vms").raise_for_status()
            rest.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = c.post("/", content=json.dumps(QUERY), headers={"X-Karma-Codec": "json"})
            r.raise_for_status()
            kvm.append(time.perf_counter() - t0)
        assert r.json() == args.vms
        t0 = time.perf_counter()
        dump = c.get("/admin/export", headers={"X-Karma-Codec": "json"}).json()
        export_s = time.perf_counter() - t0
    floor, p50 = percentile(rest, 0.5), percentile(kvm, 0.5)
    rest99, kvm99 = percentile(rest, 0.99) * 1000, percentile(kvm, 0.99) * 1000
    print(f"floor: GET /v1/vms ({args.vms} VMs, n={args.n}): p50 {floor * 1000:.1f} ms, p99 {rest99:.1f} ms")
    print(
        f"POST / filter+length over vms (n={args.n}): p50 {p50 * 1000:.1f} ms, p99 {kvm99:.1f} ms, {p50 / floor:.2f}x"
    )
    print(f"GET /admin/export: {export_s * 1000:.0f} ms, {len(dump)} base64 characters")


if __name__ == "__main__":
    main()
