"""Benchmark: run-ts (Deno) and run-js (Node.js) latency of `console.log(2+2)` through the HTTP API, each next
to its floor measured in the same VM and run: the same program started inside the guest by a shell (what the
interpreter's own start-up costs there), and the ratio. Runs are timed first in a fresh VM, then with gaps
(run-ts: the warm Deno started after a run is ready), then back to back. Prints numbers.

Then the first run-ts in VMs made from a snapshot of that VM (which holds a warm Deno): right after a create
that restores it (the copy keeps the snapshot's Deno; only the guest's code translation is cold after a restore)
and right after a create that claims a warm spare of it (the spare rehearsed a run and waited for the next Deno).
Next to the restores: the same program started cold by a shell first thing in a copy made the same way (what a
copy's first run-ts cost when the snapshot's Deno was not kept), and the ratio.

Usage: .venv/bin/python bench/run_ts.py [--runs 10] [--mem 512] [--gap 8] [--clones 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from _common import percentile, running_server

FLOOR = {
    "run-ts": "printf 'console.log(2 + 2)' > /tmp/b.ts && deno run --no-prompt /tmp/b.ts",
    "run-js": "node -e 'console.log(2 + 2)'",
}


def in_guest_ms(c: httpx.Client, vm: str, cmd: str) -> float:
    """Wall time of ``cmd`` measured by the guest's own clock (no host round trip)."""
    timed = f"s=$(date +%s%N); {cmd} >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
    out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": timed, "timeoutMs": 60000}).raise_for_status().json()
    return int(out["stdout"].strip()) / 1e6


def _runs(c: httpx.Client, vm: str, endpoint: str, n: int, gap_s: float) -> list[float]:
    times = []
    for _ in range(n):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        r = c.post(f"/v1/vms/{vm}/{endpoint}", json={"code": "console.log(2 + 2)"}).raise_for_status()
        times.append(time.perf_counter() - t0)
        assert r.json()["stdout"] == "4\n", r.text
    return times


def _copies(c: httpx.Client, log: Path, body: dict[str, object], n: int) -> dict[str, list[float]]:
    """Create -> first run-ts times of VMs made from a snapshot: ``restored`` (the create restored it),
    ``spare`` (it claimed a warm spare), and ``cold`` (restored, then the program started cold by a shell)."""
    made: dict[str, list[float]] = {"restored": [], "spare": [], "cold": []}
    while min(len(v) for v in made.values()) < n:
        ready = log.read_text().count("ready in")
        t0 = time.perf_counter()
        clone = c.post("/v1/vms", json=body).raise_for_status().json()["id"]
        created = time.perf_counter() - t0
        claimed = f"{clone}: spare" in log.read_text()
        if claimed:
            made["spare"].append(created + _runs(c, clone, "run-ts", 1, 0)[0])
        elif len(made["cold"]) < len(made["restored"]):
            t0 = time.perf_counter()
            c.post(f"/v1/vms/{clone}/exec", json={"cmd": FLOOR["run-ts"]}).raise_for_status()
            made["cold"].append(created + time.perf_counter() - t0)
        else:
            made["restored"].append(created + _runs(c, clone, "run-ts", 1, 0)[0])
        if not claimed:  # next: a create that claims the spare this one made
            deadline = time.monotonic() + 120
            while log.read_text().count("ready in") <= ready and time.monotonic() < deadline:
                time.sleep(0.2)
        c.delete(f"/v1/vms/{clone}").raise_for_status()
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mem", type=int, default=512)
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between runs (a warm Deno starts meanwhile)")
    parser.add_argument("--clones", type=int, default=3, help="VMs made from a snapshot, each way")
    args = parser.parse_args()
    results = {}
    shape = {"cpu": 1, "memMb": args.mem, "allowIps": []}
    with running_server(SHEESH_WARM_SPARES="1") as server, server.client() as c:
        vm = c.post("/v1/vms", json=shape).raise_for_status().json()["id"]
        for endpoint, floor_cmd in FLOOR.items():
            floors = [in_guest_ms(c, vm, floor_cmd) for _ in range(args.runs)]
            first = _runs(c, vm, endpoint, 1, 0)[0]
            gapped = _runs(c, vm, endpoint, args.runs, args.gap)
            b2b = _runs(c, vm, endpoint, args.runs, 0)
            results[endpoint] = (first, gapped, b2b, floors)
        _runs(c, vm, "run-ts", 1, 0)
        time.sleep(args.gap)  # the warm Deno is ready
        snap = c.post(f"/v1/vms/{vm}/snapshots").raise_for_status().json()["id"]
        made = _copies(c, server.log, {**shape, "snapshotId": snap}, args.clones)
        c.delete(f"/v1/vms/{vm}").raise_for_status()
    for endpoint, (first, gapped, b2b, floors) in results.items():
        floor = percentile(floors, 0.5)
        print(
            f"{endpoint} console.log(2+2) ({args.mem} MiB VM); floor (the same program started in the guest by a "
            f"shell) p50 {floor * 1000:.0f} ms; first run in the VM {first * 1000:.0f} ms ({first / floor:.2f}x)"
        )
        for label, times in ((f"{args.gap:g} s apart", gapped), ("back to back", b2b)):
            p50 = percentile(times, 0.5)
            print(
                f"  {label} (n={len(times)}): p50 {p50 * 1000:.0f} ms, p99 {percentile(times, 0.99) * 1000:.0f} ms; "
                f"ratio to floor {p50 / floor:.2f}"
            )
    floor = percentile(results["run-ts"][3], 0.5)
    warm = percentile(results["run-ts"][1], 0.5)
    for how, label in (("restored", "restores the snapshot"), ("spare", "claims a warm spare of it")):
        times = made[how]
        p50 = percentile(times, 0.5)
        print(
            f"create from a snapshot holding a warm Deno -> first run-ts, when the create {label} (n={len(times)}): "
            f"p50 {p50 * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; ratio to the cold floor {p50 / floor:.2f}, "
            f"to a warm run ({warm * 1000:.0f} ms) {p50 / warm:.2f}"
        )
    cold = percentile(made["cold"], 0.5)
    restored = percentile(made["restored"], 0.5)
    print(
        f"  the same create -> the program started cold by a shell first thing in the copy (n={len(made['cold'])}): "
        f"p50 {cold * 1000:.0f} ms; the restore's first run-ts through the kept Deno: {restored / cold:.2f} of that"
    )


if __name__ == "__main__":
    main()
