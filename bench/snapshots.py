"""Benchmark: VM creation from template snapshots, snapshot save and restore times. Prints numbers.

create -> first exec over n creates served from the shape's template (the first create boots and builds
the template; it is excluded). Each VM is deleted after its exec so the host load stays constant. Each
create is broken down from the node's log: API (HTTP, auth, DB, scheduling, the hop to the node), disk
overlay, network plumbing, QEMU start + restore to running, the guest agent's first answer (the identity
refresh), then the first exec. The floor, measured in the same run: the same template restored by the VMM
layer alone (QemuDriver: QEMU start, incoming migration, cont; its own tap; no API, node or plumbing), to
running and to its guest agent's first answer.
Usage: .venv/bin/python bench/snapshots.py [--creates 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _common import percentile, running_server
from tests.server import ServerProcess

from sheesh.config import Settings
from sheesh.guest.protocol import Op
from sheesh.image.builder import ImageBuilder
from sheesh.node.agent import SNAPSHOT_MACHINE
from sheesh.node.guest_client import GuestClient
from sheesh.vmm.driver import AGENT_SOCKET, SNAPSHOT_DISK, SNAPSHOT_MEMORY, SNAPSHOT_STATE, MachineSpec, RestoreSource
from sheesh.vmm.qemu import QemuDriver

BODY = {"cpu": 1, "memMb": 256, "allowIps": []}


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms"


RESTORED = re.compile(r"restored (\S+) from \S+: disk (\d+) ms, machine\+agent\+identity (\d+) ms")
BOOTED = re.compile(r"(\S+): network plugged in (\d+) ms, VMM up after (\d+) ms, agent after (\d+) ms")
CLAIMED = re.compile(
    r"(\S+): spare \S+ claimed: moved in (\d+) ms, then network in (\d+) ms and resumed with its identity in (\d+) ms"
)
SPARE_READY = "of snapshot snap-tpl-"
CLAIMED_MARK = " claimed: moved in "


def breakdown(log: str, vm_id: str) -> dict[str, float] | None:
    """The node's timings of one create from the template (ms), from its log lines: a restore, or a claimed
    warm spare (folder moved, then network and resume + identity at the same time)."""
    claimed = next((m for m in CLAIMED.finditer(log) if m.group(1) == vm_id), None)
    if claimed is not None:
        moved, network, resumed = (float(claimed.group(i)) for i in (2, 3, 4))
        return {"node": moved + max(network, resumed), "disk": moved, "network": network, "qemu": 0, "agent": resumed}
    restored = next((m for m in RESTORED.finditer(log) if m.group(1) == vm_id), None)
    booted = next((m for m in BOOTED.finditer(log) if m.group(1) == vm_id), None)
    if restored is None or booted is None:
        return None
    disk, machine = float(restored.group(2)), float(restored.group(3))
    return {
        "node": disk + machine,
        "disk": disk,
        "network": float(booted.group(2)),
        "qemu": float(booted.group(3)),
        "agent": float(booted.group(4)),
    }


def wait_spares(server: ServerProcess, made: int, timeout_s: float = 30) -> None:
    """Until the node has made ``made`` spares of the template in all (each create took one and makes one)."""
    deadline = time.monotonic() + timeout_s
    while server.log.read_text().count(SPARE_READY) < made and time.monotonic() < deadline:
        time.sleep(0.05)


async def bare_restores(snap: Path, runs: int) -> tuple[list[float], list[float]]:
    """The floor: ``runs`` restores of the template ``snap`` by the VMM layer alone; seconds to running and
    to the first answered ping of the guest agent."""
    image = ImageBuilder(Settings().resolved_image_dir()).build()
    nic = json.loads((snap / SNAPSHOT_MACHINE).read_text()).get("nic", False)
    to_running, to_agent = [], []
    with (
        tempfile.TemporaryDirectory(prefix="sheesh-floor-") as tmp,
        tempfile.TemporaryDirectory(prefix="sheesh-floor-", dir="/dev/shm") as ram,
    ):
        drv = QemuDriver(Path(tmp), accel=Settings().accel, ram_dir=Path(ram))
        tap = "sbfloor0"
        if nic:
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        try:
            for i in range(runs + 1):  # the first pays the driver's one-time accelerator probe: not counted
                wd = Path(tmp) / f"floor-{i}"
                wd.mkdir()
                disk = wd / "disk.qcow2"
                await drv.create_disk_from(snap / SNAPSHOT_DISK, disk)
                memory = snap / SNAPSHOT_MEMORY
                restore = RestoreSource(snap / SNAPSHOT_STATE, memory if memory.exists() else None)
                net = {"tap": tap, "mac": "52:54:00:00:00:fe"} if nic else {}
                spec = MachineSpec(f"floor-{i}", 1, 256, image.kernel, image.initrd, disk, wd, restore=restore, **net)
                t0 = time.perf_counter()
                await drv.start(spec)
                to_running.append(time.perf_counter() - t0)
                client = GuestClient(wd / AGENT_SOCKET)
                await client.wait_ready(30, op=Op.PING)
                to_agent.append(time.perf_counter() - t0)
                await client.close()
                await drv.kill(spec.vm_id)
            del to_running[0], to_agent[0]
        finally:
            if nic:
                subprocess.run(["ip", "link", "del", tap], check=False)
    return to_running, to_agent


def burst_creates(c: httpx.Client, ids: list[str], n: int = 10) -> list[float]:
    """create -> first exec back to back: a create may find its spare still in the making, and restore."""
    burst = []
    for _ in range(n):
        t0 = time.perf_counter()
        vm = c.post("/v1/vms", json=BODY).raise_for_status().json()
        c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).raise_for_status()
        burst.append(time.perf_counter() - t0)
        c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
        ids.append(vm["id"])
    return burst


def save_and_restore(c: httpx.Client, vm_id: str, n: int = 5) -> tuple[list[float], list[float], list[float]]:
    """Snapshot saves (in the node, through the API) and restores of each snapshot through the API."""
    saves, save_api, restores = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        snap = c.post(f"/v1/vms/{vm_id}/snapshots").raise_for_status().json()
        save_api.append(time.perf_counter() - t0)
        saves.append(snap["saveMs"] / 1000)
        t0 = time.perf_counter()
        vm = c.post("/v1/vms", json={**BODY, "snapshotId": snap["id"]}).raise_for_status().json()
        restores.append(time.perf_counter() - t0)
        c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
        c.delete(f"/v1/snapshots/{snap['id']}").raise_for_status()
    return saves, save_api, restores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--spares", type=int, default=1, help="SHEESH_WARM_SPARES (0: every create restores)")
    args = parser.parse_args()
    with running_server(SHEESH_TEMPLATES="true", SHEESH_WARM_SPARES=str(args.spares)) as server, server.client() as c:
        first = c.post("/v1/vms", json=BODY).raise_for_status().json()
        deadline = time.monotonic() + 120
        while True:  # wait for the template of this shape
            probe = c.post("/v1/vms", json=BODY).raise_for_status().json()
            c.delete(f"/v1/vms/{probe['id']}")
            if probe["provisionMode"] == "snapshot" or time.monotonic() > deadline:
                break
            time.sleep(2)
        creates, firsts, execs, modes, ids = [], [], [], set(), []
        for _ in range(args.creates):
            if args.spares:
                wait_spares(server, server.log.read_text().count(CLAIMED_MARK) + 1)
            t0 = time.perf_counter()
            vm = c.post("/v1/vms", json=BODY).raise_for_status().json()
            t1 = time.perf_counter()
            c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).raise_for_status()
            firsts.append(time.perf_counter() - t0)
            creates.append(t1 - t0)
            execs.append(time.perf_counter() - t1)
            modes.add(vm["provisionMode"])
            ids.append(vm["id"])
            c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
        burst = burst_creates(c, ids)
        template = next((server.data_dir / "snapshots").glob("snap-tpl-*"))
        floor_running, floor_agent = asyncio.run(bare_restores(template, 10))
        log = server.log.read_text()
        parts = [
            {**b, "api": create * 1000 - b["node"]}
            for create, vm_id in zip(creates, ids[: len(creates)], strict=True)
            if (b := breakdown(log, vm_id)) is not None
        ]
        saves, save_api, restores = save_and_restore(c, first["id"])
        c.delete(f"/v1/vms/{first['id']}").raise_for_status()
    claimed = sum(1 for vm_id in ids if re.search(rf"{vm_id}: spare \S+ claimed", log))
    print(f"warm spares per template: {args.spares}; creates that claimed a spare: {claimed} of {len(ids)}")
    how = "each after the previous create's spare was ready" if args.spares else "one after another"
    print(f"create from template (n={len(creates)}, {how}, modes {sorted(modes)}): create {ms(creates)}")
    p50 = percentile(firsts, 0.5)
    tail = percentile(firsts, 0.99) / p50
    print(f"create -> first exec from template (n={len(firsts)}): {ms(firsts)} (p99/p50 {tail:.2f})")

    def median(key: str) -> float:
        return percentile([b[key] for b in parts], 0.5)

    print(
        f"  breakdown, p50 of each (n={len(parts)}): API + auth + DB + node hop {median('api'):.0f} ms, "
        f"disk overlay (a claim: the spare's folder moved) {median('disk'):.0f} ms, "
        f"network {median('network'):.0f} ms, QEMU restore to running (a claim: done ahead) {median('qemu'):.0f} ms, "
        f"agent's first answer (identity refresh) {median('agent'):.0f} ms, "
        f"first exec {percentile(execs, 0.5) * 1000:.0f} ms"
    )
    floor = percentile(floor_agent, 0.5)
    print(
        f"  floor (the template restored by the VMM layer alone, n={len(floor_agent)}): to running "
        f"{ms(floor_running)}; to the agent's first answer {ms(floor_agent)}; ratio {p50 / floor:.2f}"
    )
    print(f"create -> first exec, 10 back to back (spares may still be in the making): {ms(burst)}")
    print(f"snapshot save, in node (n={len(saves)}): {ms(saves)}; through the API: {ms(save_api)}")
    print(f"restore from snapshot through the API, create -> RUNNING (n={len(restores)}): {ms(restores)}")


if __name__ == "__main__":
    main()
