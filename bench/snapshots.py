"""Benchmark: VM creation from template snapshots, snapshot save and restore times. Prints numbers.

create -> first exec over n creates served from the shape's template (the first create boots and builds
the template; it is excluded). Each VM is deleted after its exec so the host load stays constant.
Usage: .venv/bin/python bench/snapshots.py [--creates 50]
"""

from __future__ import annotations

import argparse
import time

from _common import percentile, running_server

BODY = {"cpu": 1, "memMb": 256, "allowIps": []}


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=50)
    args = parser.parse_args()
    with running_server(SHEESH_TEMPLATES="true") as server, server.client() as c:
        first = c.post("/v1/vms", json=BODY).raise_for_status().json()
        deadline = time.monotonic() + 120
        while True:  # wait for the template of this shape
            probe = c.post("/v1/vms", json=BODY).raise_for_status().json()
            c.delete(f"/v1/vms/{probe['id']}")
            if probe["provisionMode"] == "snapshot" or time.monotonic() > deadline:
                break
            time.sleep(2)
        creates, firsts, modes = [], [], set()
        for _ in range(args.creates):
            t0 = time.perf_counter()
            vm = c.post("/v1/vms", json=BODY).raise_for_status().json()
            t1 = time.perf_counter()
            c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).raise_for_status()
            firsts.append(time.perf_counter() - t0)
            creates.append(t1 - t0)
            modes.add(vm["provisionMode"])
            c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
        saves, restores, save_api = [], [], []
        for _ in range(5):
            t0 = time.perf_counter()
            snap = c.post(f"/v1/vms/{first['id']}/snapshots").raise_for_status().json()
            save_api.append(time.perf_counter() - t0)
            saves.append(snap["saveMs"] / 1000)
            t0 = time.perf_counter()
            vm = c.post("/v1/vms", json={**BODY, "snapshotId": snap["id"]}).raise_for_status().json()
            restores.append(time.perf_counter() - t0)
            c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
            c.delete(f"/v1/snapshots/{snap['id']}").raise_for_status()
        c.delete(f"/v1/vms/{first['id']}").raise_for_status()
    print(f"create from template (n={len(creates)}, modes {sorted(modes)}): create {ms(creates)}")
    print(f"create -> first exec from template (n={len(firsts)}): {ms(firsts)}")
    print(f"snapshot save, in node (n={len(saves)}): {ms(saves)}; through the API: {ms(save_api)}")
    print(f"restore from snapshot through the API, create -> RUNNING (n={len(restores)}): {ms(restores)}")


if __name__ == "__main__":
    main()
