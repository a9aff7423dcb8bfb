"""The node agent: runs VMs on this host through a ``VmmDriver`` and talks to their guest agents.

It keeps per-VM state in ``vms_dir/<vm-id>/`` (``vmfiles.py``) and nothing else; the control plane owns the
records. ``NodeAgent`` implements ``sheesh.node.contract.NodeClient`` and is the VM lifecycle; it composes the
parts with one job each: ``VmFiles`` (folders, specs, marks, logs), ``Plumbing`` (taps, rules) and ``Guests``
(guest agent requests). VMM failures become ``NodeError`` in one place, ``_vmm``.

About 400 lines on purpose: the whole ``NodeClient`` surface and the VM lifecycle read in one place; what is
not lifecycle is delegated in one line to the parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sheesh.errors import ConflictError, NotFoundError, SheeshError, UnavailableError
from sheesh.execstream import ExecStream, StreamRequest
from sheesh.models import ExecRequest, ExecResult, ScriptRequest, ScriptResult, VmKind
from sheesh.node.contract import NodeCapacity, NodeStatus, NodeVmSpec, SnapshotInfo, VmNet, VmUsage, VpnSpec
from sheesh.node.errors import NodeError
from sheesh.node.guests import Guests
from sheesh.node.network import HostNetwork
from sheesh.node.plumbing import GuestNet, Plumbing
from sheesh.node.vmfiles import CDROM_FILE, DISK_FILE, INSTALLED_MARK, NIC_MARK, SEED_FILE, VmFiles
from sheesh.node.vpn import VpnServers
from sheesh.node.warmpool import SPARE_PREFIX, WarmPool
from sheesh.vmm.driver import (
    AGENT_SOCKET,
    SNAPSHOT_DISK,
    SNAPSHOT_MEMORY,
    SNAPSHOT_STATE,
    DiskInfo,
    MachineSpec,
    ProgressFn,
    RestoreSource,
    VmmDriver,
    VmmError,
)

log = logging.getLogger(__name__)
SPARE_WARM_S = 5.0
"""How long a spare being made waits for its guest's warm shells to be back after its first command."""
SPARE_DENO_S = 30.0
"""How long a spare being made waits for the warm Deno its snapshot had to be started again (its own)."""
SNAPSHOT_MACHINE = "machine.json"
"""Beside a snapshot's files: what devices the saved machine had (``{"nic": bool}``)."""


@contextlib.contextmanager
def _vmm(what: str) -> Iterator[None]:
    """The one place VMM failures become node errors: ``what`` failed, and why."""
    try:
        yield
    except VmmError as exc:
        raise NodeError(f"{what}: {exc.message}" if what else exc.message) from exc


class NodeAgent:
    """Owns the VMs of one host. Methods raise ``NodeError``/``UnavailableError`` on failure."""

    def __init__(
        self,
        vms_dir: Path,
        driver: VmmDriver,
        *,
        boot_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        name: str = "local",
        snapshots_dir: Path | None = None,
        network: HostNetwork | None = None,
        warm_spares: int = 0,
    ) -> None:
        self.vms_dir = vms_dir
        self.snapshots_dir = snapshots_dir or vms_dir.parent / "snapshots"
        self.driver = driver
        self.boot_timeout_s = boot_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.name = name
        self.files = VmFiles(vms_dir, name)
        self.plumbing = Plumbing(network)
        self.guests = Guests(lambda vm_id: self.files.path(vm_id, AGENT_SOCKET))
        self.vpns = VpnServers(self.workdir, enabled=network is not None)
        self._restarting: set[str] = set()
        self._strays_checked = False
        self.spares = WarmPool(warm_spares, self._make_spare, self.destroy)
        """Creates from a snapshot claim a ready spare of it when there is one (``warm_spares`` per snapshot
        and shape in use, each a paused VM: its RAM, no CPU)."""

    @property
    def network(self) -> HostNetwork | None:
        return self.plumbing.network

    # --- files ------------------------------------------------------------------------------------------
    def workdir(self, vm_id: str) -> Path:
        return self.files.workdir(vm_id)

    def spec_of(self, vm_id: str) -> NodeVmSpec:
        """The spec the VM was last created or started with; NotFoundError if the node does not hold it."""
        return self.files.spec_of(vm_id)

    def has_nic(self, vm_id: str) -> bool:
        return self.files.has(vm_id, NIC_MARK)

    async def local_vms(self) -> list[str]:
        return [v for v in self.files.local_vms() if not v.startswith(SPARE_PREFIX)]

    async def log_tail(self, vm_id: str, kind: str, lines: int) -> list[str]:
        return self.files.log_tail(vm_id, kind, lines)

    def serial_tail(self, vm_id: str, lines: int) -> str:
        return "\n".join(self.files.log_tail(vm_id, "serial", lines))

    def machine_spec(self, spec: NodeVmSpec, restore: RestoreSource | None = None) -> MachineSpec:
        """How to run the VM now. Full VMs: the ISO in the drive and the seed, if any; the firmware boots
        when there is an ISO to boot or an installed OS, else the sheesh kernel boots the disk."""
        f = self.files
        vm_id = spec.vm_id
        base: dict[str, Any] = {
            "vm_id": vm_id,
            "cpu": spec.cpu,
            "mem_mb": spec.mem_mb,
            "kernel": spec.kernel,
            "initrd": spec.initrd,
            "disk": f.path(vm_id, DISK_FILE),
            "workdir": f.workdir(vm_id),
        }
        if self.has_nic(vm_id):
            if self.network is None or spec.net is None:
                raise NodeError(f"VM {vm_id} has a network device but the node's networking is off")
            base |= {"tap": spec.net.tap, "mac": spec.net.mac}
        if spec.kind != VmKind.FULL:
            return MachineSpec(**base, restore=restore)
        cdrom, seed = f.path(vm_id, CDROM_FILE), f.path(vm_id, SEED_FILE)
        if cdrom.exists():  # an ISO may install onto the disk: from now on the firmware boots the VM
            f.mark(vm_id, INSTALLED_MARK)
        return MachineSpec(
            **base,
            full=True,
            firmware_boot=cdrom.exists() or f.has(vm_id, INSTALLED_MARK),
            cdrom=cdrom if cdrom.exists() else None,
            seed=seed if seed.exists() else None,
        )

    # --- network ----------------------------------------------------------------------------------------
    def _wired(self, spec: NodeVmSpec) -> VmNet | None:
        return self.plumbing.wired(spec, self.has_nic(spec.vm_id))

    def guest_net(self, spec: NodeVmSpec) -> GuestNet | None:
        """What the guest must configure on its NIC (None: the node has no networking for it)."""
        return self.plumbing.guest_net(spec)

    def _wired_guest_net(self, spec: NodeVmSpec) -> GuestNet | None:
        return self.guest_net(spec) if self._wired(spec) is not None else None

    async def ensure_network(self) -> bool:
        return await self.plumbing.ensure()

    async def start_vpn(self, spec: VpnSpec) -> None:
        self.spec_of(spec.vm_id)
        await self.vpns.start(spec)

    async def stop_vpn(self, vm_id: str) -> None:
        await self.vpns.stop(vm_id)

    async def update_network(self, vm_id: str, net: VmNet) -> None:
        """New traffic policy (allowlist, firewall, ports) for a VM; applied at once if its tap is up."""
        self.files.remember(dataclasses.replace(self.spec_of(vm_id), net=net))
        await self.plumbing.update(net)

    # --- lifecycle --------------------------------------------------------------------------------------
    async def _boot(self, spec: NodeVmSpec, restore: RestoreSource | None = None, *, spare: bool = False) -> None:
        """Start the machine and wait for its agent (see ``Guests.wait_ready``). A full VM booting its
        firmware (an ISO or an installed OS) has no agent: it is up once the process runs. A ``spare`` runs
        in the background with its tap off the bridge (its guest's address is set all the same: the code that
        sets it is then translated before a claim needs it)."""
        started = time.monotonic()
        vm_id = spec.vm_id
        if restore is None:  # a fresh boot gets a NIC whenever the node has networking
            self.files.mark(vm_id, NIC_MARK, self.network is not None and spec.net is not None)
        machine = dataclasses.replace(self.machine_spec(spec, restore), background=spare)
        if (net := self._wired(spec)) is not None:
            await (self.plumbing.plug_spare(net) if spare else self.plumbing.plug(net))
        plugged = time.monotonic()
        with _vmm(f"VM {vm_id} failed to start"):
            await self.driver.start(machine)
        running = time.monotonic()
        if machine.firmware_boot:
            took = (running - started) * 1000
            log.info("%s: firmware boot (cdrom %s), VMM up in %.0f ms", vm_id, machine.cdrom, took)
            return
        guest_net = self._wired_guest_net(spec)
        try:
            alive = lambda: self.driver.is_running(vm_id)  # noqa: E731
            nic_set = await self.guests.wait_ready(vm_id, self.boot_timeout_s, alive, restore is not None, guest_net)
            ready = time.monotonic()
            if not nic_set and guest_net is not None:  # a fresh boot (or an agent too old to set it on refresh)
                steps = await self.guests.configure_net(vm_id, guest_net)
                log.debug("%s: guest NIC set (%s)", vm_id, ", ".join(steps or ["unchanged"]))
        except UnavailableError as exc:
            await self._drop(vm_id)
            tail = self.serial_tail(vm_id, 15)
            raise NodeError(f"VM {vm_id} did not come up: {exc.message}\n{tail}".strip()) from exc
        log.info(
            "%s: network plugged in %.0f ms, VMM up after %.0f ms, agent after %.0f ms, NIC set after %.0f more ms",
            vm_id,
            (plugged - started) * 1000,
            (running - plugged) * 1000,
            (ready - running) * 1000,
            (time.monotonic() - ready) * 1000,
        )

    async def create(self, spec: NodeVmSpec) -> None:
        """Make the VM's disk overlay and boot it (or restore ``spec.snapshot_id``); returns once its guest
        agent answers. A restored VM gets fresh entropy, the current time and a new boot id. ConflictError if a
        VM of that id runs here already."""
        if self.runs(spec.vm_id):
            raise ConflictError(f"VM {spec.vm_id} already runs on node {self.name}")
        if spec.snapshot_id is not None and await self._claim_spare(spec):
            await self._grow(spec)
            self.spares.want(spec)
            return
        self.workdir(spec.vm_id).mkdir(parents=True, exist_ok=True)
        self.files.remember(spec)
        if spec.snapshot_id is not None:
            await self._restore(spec, spec.snapshot_id)
            await self._grow(spec)
            self.spares.want(spec)
            return
        with _vmm(f"cannot create disk for {spec.vm_id}"):
            await self.driver.create_disk(spec.rootfs, self.files.path(spec.vm_id, DISK_FILE), spec.disk_size_mb)
        await self._boot(spec)

    async def _restore(self, spec: NodeVmSpec, snapshot_id: str, *, spare: bool = False) -> None:
        snap = self._saved(snapshot_id)
        memory = snap / SNAPSHOT_MEMORY
        marks = [time.monotonic()]
        with _vmm(f"cannot create disk for {spec.vm_id}"):
            await self.driver.create_disk_from(snap / SNAPSHOT_DISK, self.files.path(spec.vm_id, DISK_FILE))
        marks.append(time.monotonic())
        try:  # snapshots from before networking have no machine file and no NIC
            saved = json.loads((snap / SNAPSHOT_MACHINE).read_text())
        except (OSError, ValueError):
            saved = {}
        self.files.mark(spec.vm_id, NIC_MARK, bool(saved.get("nic")))
        if not saved.get("nic") and self.network is not None:
            log.warning("%s: snapshot %s has no network device; the VM has no network", spec.vm_id, snapshot_id)
        await self._boot(spec, RestoreSource(snap / SNAPSHOT_STATE, memory if memory.exists() else None), spare=spare)
        marks.append(time.monotonic())
        log.info(
            "restored %s from %s: disk %.0f ms, machine+agent+identity %.0f ms",
            spec.vm_id,
            snapshot_id,
            *((b - a) * 1000 for a, b in itertools.pairwise(marks)),
        )

    async def _grow(self, spec: NodeVmSpec) -> None:
        """A VM made from a snapshot with a larger disk than the snapshot's: grow the disk and its file system."""
        if spec.snapshot_disk_mb is not None and spec.disk_size_mb > spec.snapshot_disk_mb:
            with _vmm(f"cannot grow the disk of {spec.vm_id}"):
                await self.driver.resize_disk(spec.vm_id, spec.disk_size_mb)
            await self.guests.resize_fs(spec.vm_id)

    async def _make_spare(self, like: NodeVmSpec) -> str:
        """A spare for VMs like ``like`` (see ``WarmPool``): restored from its snapshot in the background, its
        identity refreshed and one command run (so the code paths of a create are translated), then paused."""
        assert like.snapshot_id is not None
        spare_id = f"{SPARE_PREFIX}{uuid.uuid4().hex[:12]}"
        net = VmNet(vm_id=spare_id, ip=like.net.ip) if like.net is not None else None
        disk_mb = like.snapshot_disk_mb or like.disk_size_mb
        spec = dataclasses.replace(like, vm_id=spare_id, net=net, disk_size_mb=disk_mb, snapshot_disk_mb=None)
        self.workdir(spare_id).mkdir(parents=True)
        self.files.remember(spec)
        try:
            await self._restore(spec, like.snapshot_id, spare=True)
            await self._warm(spare_id)
        except BaseException:
            await self.destroy(spare_id)
            raise
        return spare_id

    async def _warm(self, spare_id: str) -> None:
        """One command through a warm shell, then the guest's shells made again (up to ``SPARE_WARM_S``), so a
        claim's first command finds a ready shell and nothing being started beside it; a warm Deno (the one the
        snapshot had) ready too, rehearsed once (a no-op run: its code is translated before a run needs it;
        the next one starts after it, so the claim gets a Deno of its own) and ready again (up to
        ``SPARE_DENO_S`` each); then pause."""
        shells = int((await self.guests.ping(spare_id)).get("warm", 0))
        answer = await self.guests.exec(spare_id, ExecRequest(cmd="true"), 1024)
        if answer.exit_code != 0:
            raise NodeError(f"spare {spare_id} cannot run a command: {answer.stderr[-500:]}")
        deadline = time.monotonic() + SPARE_WARM_S
        while int((await self.guests.ping(spare_id)).get("warm", 0)) < shells and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if await self._deno_ready(spare_id) and await self.guests.rehearse(spare_id):
            await self._deno_ready(spare_id)
        with _vmm(f"cannot pause spare {spare_id}"):
            await self.driver.pause(spare_id)

    async def _deno_ready(self, vm_id: str) -> bool:
        """Wait (up to ``SPARE_DENO_S``) while the guest's warm Deno is starting; whether one is ready."""
        deadline = time.monotonic() + SPARE_DENO_S
        while (state := (await self.guests.ping(vm_id)).get("deno")) == "starting" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return state == "ready"

    async def _claim_spare(self, spec: NodeVmSpec) -> bool:
        """Make a ready spare the VM of ``spec``: its folder, process, tap and guest connection take the VM's
        id, its tap joins the bridge with the VM's rules, it resumes and its guest takes the VM's identity (new
        entropy, the time, boot id, address and MAC). False if no spare was ready or the spare failed (then
        it is destroyed and the caller restores as without one)."""
        spare_id = self.spares.take(spec)
        if spare_id is None:
            return False
        vm_id, started = spec.vm_id, time.monotonic()
        try:
            spare = self.spec_of(spare_id)
            with _vmm(f"cannot claim spare {spare_id}"):
                await self.driver.rename(spare_id, vm_id, self.workdir(vm_id))
        except SheeshError as exc:
            log.warning("%s: spare %s unusable, restoring instead: %s", vm_id, spare_id, exc.message)
            await self.destroy(spare_id)
            return False
        self.files.forget(spare_id)
        self.guests.rename(spare_id, vm_id, self.files.path(vm_id, AGENT_SOCKET))
        self.files.remember(spec)
        moved = time.monotonic()
        plugged = resumed = moved

        async def plug() -> None:
            nonlocal plugged
            if (net := self._wired(spec)) is not None and spare.net is not None:
                await self.plumbing.claim(spare.net, net)
            plugged = time.monotonic()

        async def resume() -> None:  # meanwhile: the guest's NIC changes with its identity, sends nothing before
            nonlocal resumed
            with _vmm(f"cannot resume spare {spare_id}"):
                await self.driver.resume(vm_id)
            guest_net = self._wired_guest_net(spec)
            alive = lambda: self.driver.is_running(vm_id)  # noqa: E731
            ready = self.guests.wait_ready(vm_id, self.boot_timeout_s, alive, True, guest_net, copy=False)
            if not await ready and guest_net:
                await self.guests.configure_net(vm_id, guest_net)
            resumed = time.monotonic()

        try:
            await asyncio.gather(plug(), resume())
        except SheeshError as exc:
            log.warning("%s: spare %s failed, restoring instead: %s", vm_id, spare_id, exc.message)
            await self.destroy(vm_id)
            await self.plumbing.unplug(spare_id, spare.net)  # its tap, if it was not renamed
            return False
        log.info(
            "%s: spare %s claimed: moved in %.0f ms, then network in %.0f ms and resumed with its identity in %.0f ms",
            vm_id,
            spare_id,
            (moved - started) * 1000,
            (plugged - moved) * 1000,
            (resumed - moved) * 1000,
        )
        return True

    async def start(self, spec: NodeVmSpec) -> None:
        """Boot an existing (stopped) VM from its disk."""
        if not self.files.path(spec.vm_id, DISK_FILE).exists():
            raise NotFoundError(f"disk of VM {spec.vm_id} is missing on node {self.name}")
        self.files.remember(spec)
        await self._boot(spec)

    async def stop(self, vm_id: str) -> None:
        """ACPI shutdown; after ``stop_timeout_s`` the process is killed."""
        if self.driver.is_running(vm_id):
            with contextlib.suppress(VmmError):
                await self.driver.powerdown(vm_id)
            if not await self.driver.wait_stopped(vm_id, self.stop_timeout_s):
                await self._drop(vm_id)
        await self._drop(vm_id)

    async def destroy(self, vm_id: str) -> None:
        """Kill the VM, remove its tap and rules and all its files (a machine an earlier process left running
        is adopted first, so it is killed too)."""
        if not self.driver.is_running(vm_id) and self.workdir(vm_id).exists():
            await self.driver.attach(vm_id, self.workdir(vm_id))
        await self._drop(vm_id)
        await self.vpns.stop(vm_id)
        net = self.plumbing.plugged(vm_id)
        if net is None:
            with contextlib.suppress(SheeshError):
                net = self.spec_of(vm_id).net
        await self.plumbing.unplug(vm_id, net)
        self.files.forget(vm_id)
        await asyncio.to_thread(shutil.rmtree, self.workdir(vm_id), True)

    async def _drop(self, vm_id: str) -> None:
        await self.guests.drop(vm_id)
        await self.driver.kill(vm_id)

    async def is_running(self, vm_id: str) -> bool:
        """Whether the VM's machine runs (a VM the node is restarting counts as running)."""
        return self.runs(vm_id)

    def runs(self, vm_id: str) -> bool:
        """``is_running`` for callers on this host."""
        return self.driver.is_running(vm_id) or vm_id in self._restarting

    async def exit_reason(self, vm_id: str) -> str | None:
        return self.driver.exit_reason(vm_id)

    def _require_running(self, vm_id: str) -> None:
        if not self.driver.is_running(vm_id):
            raise UnavailableError(f"VM {vm_id} is not running")

    async def reattach(self, vm_ids: Sequence[str]) -> set[str]:
        """Adopt VMs left running by an earlier manager process; returns the live ones, with their taps and
        one ruleset for all of them (see ``Plumbing.adopt``)."""
        await self._discard_stray_spares()
        alive: set[str] = set()
        nets: list[VmNet] = []
        for vm_id in vm_ids:
            if not await self.driver.attach(vm_id, self.workdir(vm_id)):
                continue
            alive.add(vm_id)
            with contextlib.suppress(NotFoundError):
                if (net := self._wired(self.spec_of(vm_id))) is not None:
                    nets.append(net)
        if alive:
            await self.plumbing.adopt(nets)
        if pruned := self.driver.prune(alive):
            log.info("freed the RAM of %d VMs that stopped while no manager ran: %s", len(pruned), ", ".join(pruned))
        return alive

    async def _discard_stray_spares(self) -> None:
        """Spares an earlier node process left (it ended without ``close``): destroyed, taps included. Once,
        before this process makes spares of its own."""
        if self._strays_checked:
            return
        self._strays_checked = True
        for name in self.files.local_vms():
            if name.startswith(SPARE_PREFIX) and name not in self.spares.ready():
                await self.destroy(name)

    async def pause(self, vm_id: str) -> None:
        self._require_running(vm_id)
        with _vmm(""):
            await self.driver.pause(vm_id)

    async def resume(self, vm_id: str) -> None:
        """Run a paused VM again and set its guest's clock (it stood still while the VM was paused)."""
        self._require_running(vm_id)
        with _vmm(""):
            await self.driver.resume(vm_id)
        await self.guests.set_clock(vm_id)  # a machine without an agent (firmware boot) fails this at once

    # --- snapshots --------------------------------------------------------------------------------------
    async def snapshot(self, vm_id: str, snapshot_id: str, sync_guest: bool = True) -> SnapshotInfo:
        """Flush the guest's file systems (unless ``sync_guest`` is False: a paused guest cannot answer), then
        save the machine under ``snapshot_id``. The VM keeps running (or stays paused)."""
        self._require_running(vm_id)
        if sync_guest:
            await self.guests.sync(vm_id)
        dest = self.snapshots_dir / snapshot_id
        try:
            files = await self.driver.snapshot(vm_id, dest)
        except VmmError as exc:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            raise NodeError(f"snapshot of {vm_id} failed: {exc.message}") from exc
        (dest / SNAPSHOT_MACHINE).write_text(json.dumps({"nic": self.has_nic(vm_id)}))
        return SnapshotInfo(snapshot_id=snapshot_id, save_ms=files.save_ms)

    def _saved(self, snapshot_id: str | None) -> Path:
        """The folder of a snapshot saved on this node; NotFoundError if it holds none of that id."""
        snap = self.snapshots_dir / str(snapshot_id)
        if snapshot_id is None or not (snap / SNAPSHOT_STATE).exists():
            raise NotFoundError(f"snapshot {snapshot_id} has no files on node {self.name}")
        return snap

    async def keep_spares(self, spec: NodeVmSpec) -> None:
        self._saved(spec.snapshot_id)
        self.spares.want(spec)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.spares.drop(snapshot_id)
        await asyncio.to_thread(shutil.rmtree, self.snapshots_dir / snapshot_id, True)

    # --- full VMs: machine changes for media and consoles -----------------------------------------------
    async def replace_machine(self, vm_id: str, change: Callable[[], None]) -> bool:
        """Apply ``change`` (to the VM's files) with the machine off: a running VM is killed first and
        booted again after (the control plane keeps seeing it running). Returns whether it was restarted."""
        spec = dataclasses.replace(self.spec_of(vm_id), snapshot_id=None, snapshot_disk_mb=None)
        if not self.driver.is_running(vm_id):
            await asyncio.to_thread(change)
            return False
        self._restarting.add(vm_id)
        try:
            await self._drop(vm_id)
            await asyncio.to_thread(change)
            await self._boot(spec)
        finally:
            self._restarting.discard(vm_id)
        return True

    async def change_cdrom(self, vm_id: str, iso: Path | None) -> None:
        """Put ``iso`` (None: nothing) into a running full VM's CD-ROM drive; a stopped VM gets it at start
        from its files."""
        if self.driver.is_running(vm_id):
            with _vmm(f"cannot change the CD-ROM of {vm_id}"):
                await self.driver.change_cdrom(vm_id, iso)

    async def eject_cdrom(self, vm_id: str) -> None:
        """Remove a full VM's ISO (live from a running VM); the next start boots its disk."""
        self.spec_of(vm_id)
        await self.change_cdrom(vm_id, None)
        self.files.path(vm_id, CDROM_FILE).unlink(missing_ok=True)

    async def set_vnc_password(self, vm_id: str, password: str) -> None:
        self._require_running(vm_id)
        with _vmm(f"cannot set the VNC password of {vm_id}"):
            await self.driver.set_vnc_password(vm_id, password)

    async def inspect_disk(self, path: Path) -> DiskInfo:
        with _vmm(""):
            return await self.driver.inspect_disk(path)

    async def convert_disk(self, src: Path, fmt: str, dest: Path, size_mb: int, progress: ProgressFn) -> None:
        with _vmm(""):
            await self.driver.convert_disk(src, fmt, dest, size_mb, progress)

    # --- guest operations -------------------------------------------------------------------------------
    async def ping(self, vm_id: str) -> dict[str, Any]:
        self._require_running(vm_id)
        return await self.guests.ping(vm_id)

    async def exec(self, vm_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        self._require_running(vm_id)
        return await self.guests.exec(vm_id, req, output_limit)

    async def exec_stream(self, vm_id: str, req: StreamRequest, output_limit: int | None) -> ExecStream:
        self._require_running(vm_id)
        return await self.guests.exec_stream(vm_id, req, output_limit)

    async def run_script(
        self, vm_id: str, req: ScriptRequest, allow_net: bool | list[str], output_limit: int
    ) -> ScriptResult:
        self._require_running(vm_id)
        return await self.guests.run_script(vm_id, req, allow_net, output_limit)

    async def authorize_ssh(self, vm_id: str, public_keys: Sequence[str]) -> list[str]:
        self._require_running(vm_id)
        return await self.guests.authorize_ssh(vm_id, public_keys)

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes], max_expanded: int) -> dict[str, int]:
        self._require_running(vm_id)
        return await self.guests.upload(vm_id, dest, chunks, max_expanded)

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        self._require_running(vm_id)
        return await self.guests.download(vm_id, path)

    # --- the node ---------------------------------------------------------------------------------------
    async def usage(self, vm_id: str) -> VmUsage | None:
        used = self.driver.usage(vm_id)
        return VmUsage(cpu_s=used.cpu_s, mem_mb=used.mem_mb, at_s=time.time()) if used is not None else None

    async def status(self) -> NodeStatus:
        """This host's capacity (vCPUs, memory, the VM folder's disk) and its running VMs."""
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(self.vms_dir)
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        capacity = NodeCapacity(
            vcpus=os.cpu_count() or 1,
            mem_mb=mem_mb,
            disk_mb=disk.total // (1024 * 1024),
            disk_free_mb=disk.free // (1024 * 1024),
        )
        running = tuple(v for v in self.files.local_vms() if self.driver.is_running(v))
        return NodeStatus(name=self.name, capacity=capacity, running=running)

    async def close(self) -> None:
        """Discard the spares; disconnect from guests; VM processes keep running (they are re-attached on next
        start)."""
        await self.spares.drop()
        await self.guests.close()
