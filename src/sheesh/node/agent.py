"""The node agent: runs VMs on this host through a ``VmmDriver`` and talks to their guest agents.

It keeps per-VM state in ``vms_dir/<vm-id>/`` (disk overlay, sockets, logs) and nothing else; the
control plane owns the records. Implements ``sheesh.control.node_client.NodeClient``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sheesh.errors import NotFoundError, SheeshError, UnavailableError
from sheesh.guest.protocol import Op
from sheesh.models import ExecRequest, ExecResult, ScriptLanguage, ScriptRequest, ScriptResult, VmKind
from sheesh.node.errors import NodeError
from sheesh.node.guest_client import GuestClient
from sheesh.node.network import HostNetwork, VmNet
from sheesh.vmm.driver import (
    AGENT_SOCKET,
    SERIAL_LOG,
    SNAPSHOT_DISK,
    SNAPSHOT_MEMORY,
    SNAPSHOT_STATE,
    STDERR_LOG,
    STDOUT_LOG,
    MachineSpec,
    RestoreSource,
    VmmDriver,
    VmmError,
)

log = logging.getLogger(__name__)
DISK_FILE = "disk.qcow2"
SPEC_FILE = "vm.json"
"""The node's copy of the VM's spec (kind, shape, image files), so media operations can restart a VM the
node re-attached after a restart."""
CDROM_FILE = "cdrom.iso"
"""Full VMs: the ISO in the CD-ROM drive (downloaded or uploaded)."""
SEED_FILE = "seed.iso"
"""Full VMs: the cloud-init NoCloud seed of an installed cloud image."""
NIC_MARK = "nic"
"""Present when the VM's machine has a network device (booted with networking on, or restored from a snapshot
that had one): a restore must recreate exactly the devices of the saved machine."""
SNAPSHOT_MACHINE = "machine.json"
"""Beside a snapshot's files: what devices the saved machine had (``{"nic": bool}``)."""
INSTALLED_MARK = "installed"
"""Full VMs: present once the disk holds a user's OS (a cloud image); the firmware boots it."""
EXEC_GRACE_S = 5.0
TRANSFER_CHUNK = 256 * 1024
TRANSFER_TIMEOUT_S = 60.0


def tail_lines(path: Path, lines: int, block: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a file, reading backwards in blocks (logs can be large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            pos = fh.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except OSError:
        return []
    return [ln.decode(errors="replace") for ln in data.splitlines()[-lines:]] if lines > 0 else []


async def _rechunk(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    buf = bytearray()
    async for chunk in chunks:
        buf.extend(chunk)
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


@dataclass(frozen=True)
class NodeVmSpec:
    """What the node needs to run a VM: shape, image files and disk size; ``snapshot_id`` (with the disk
    size it was taken at) makes ``create`` restore that snapshot instead of booting."""

    vm_id: str
    cpu: int
    mem_mb: int
    kernel: Path
    initrd: Path
    rootfs: Path
    disk_size_mb: int
    snapshot_id: str | None = None
    snapshot_disk_mb: int | None = None
    kind: VmKind = VmKind.SANDBOX
    net: VmNet | None = None
    """Address and traffic policy (used when the node has networking)."""

    def to_json(self) -> str:
        raw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        raw = {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}
        raw["net"] = self.net.to_dict() if self.net is not None else None
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> NodeVmSpec:
        raw = json.loads(text)
        for key in ("kernel", "initrd", "rootfs"):
            raw[key] = Path(raw[key])
        raw["kind"] = VmKind(raw.get("kind", VmKind.SANDBOX))
        raw["net"] = VmNet.from_dict(raw["net"]) if raw.get("net") else None
        return cls(**raw)


@dataclass(frozen=True)
class GuestNet:
    """A guest's interface settings: static address, gateway, MAC, name servers."""

    ip: str
    prefix: int
    gateway: str
    mac: str
    dns: tuple[str, ...] = ()


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
    ) -> None:
        self.vms_dir = vms_dir
        self.snapshots_dir = snapshots_dir or vms_dir.parent / "snapshots"
        self.driver = driver
        self.boot_timeout_s = boot_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.name = name
        self._specs: dict[str, NodeVmSpec] = {}
        self._guests: dict[str, GuestClient] = {}
        self._restarting: set[str] = set()
        self.network = network
        self._nets: dict[str, VmNet] = {}
        """VMs whose taps and rules are in place."""
        self._rules_lock = asyncio.Lock()

    def workdir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id

    def _guest(self, vm_id: str) -> GuestClient:
        client = self._guests.get(vm_id)
        if client is None:
            client = GuestClient(self.workdir(vm_id) / AGENT_SOCKET)
            self._guests[vm_id] = client
        return client

    def _wired(self, spec: NodeVmSpec) -> VmNet | None:
        """The VM's network settings if it is on the node's network (networking on, a NIC in its machine)."""
        if self.network is None or spec.net is None or not self.has_nic(spec.vm_id):
            return None
        return spec.net

    async def _plug(self, spec: NodeVmSpec) -> None:
        """The VM's tap and its rules, before its machine starts."""
        if (net := self._wired(spec)) is None or self.network is None:
            return
        try:
            self._nets[spec.vm_id] = net
            await asyncio.gather(self.network.add_tap(net), self._apply_rules())
        except NodeError:
            self._nets.pop(spec.vm_id, None)
            raise

    async def _apply_rules(self) -> None:
        """Install the rules of every plugged VM; serialized, and the list is read under the lock, so the
        last ruleset applied always reflects the latest state."""
        assert self.network is not None
        async with self._rules_lock:
            await self.network.apply(list(self._nets.values()))

    def guest_net(self, spec: NodeVmSpec) -> GuestNet | None:
        """What the guest must configure on its NIC (None: the node has no networking for it)."""
        if self.network is None or spec.net is None:
            return None
        gateway = self.network.config.gateway
        return GuestNet(spec.net.ip, gateway.network.prefixlen, str(gateway.ip), spec.net.mac, self.network.config.dns)

    def _guest_net_request(self, spec: NodeVmSpec) -> dict[str, Any] | None:
        net = self.guest_net(spec) if self._wired(spec) is not None else None
        return dataclasses.asdict(net) if net is not None else None

    async def _configure_guest_net(self, spec: NodeVmSpec) -> None:
        if (request := self._guest_net_request(spec)) is not None:
            reply = await self._guest(spec.vm_id).call(Op.NET, 10, **request)
            log.debug("%s: guest NIC set (%s)", spec.vm_id, ", ".join(reply.get("steps") or ["unchanged"]))

    async def ensure_network(self) -> bool:
        """Put the VMs' rules back if something outside sheesh removed its tables (a host firewall reload
        that flushes the whole ruleset); True if it had to."""
        if self.network is None or not self._nets or await self.network.intact():
            return False
        log.warning(
            "sheesh's nftables tables were removed outside sheesh; restoring the rules of %d VMs", len(self._nets)
        )
        await self._apply_rules()
        return True

    async def _unplug(self, vm_id: str, net: VmNet | None) -> None:
        if self.network is None or net is None:
            return
        if self._nets.pop(vm_id, None) is not None:
            await self._apply_rules()
        await self.network.remove_tap(net)

    async def update_network(self, vm_id: str, net: VmNet) -> None:
        """New traffic policy (allowlist, firewall, ports) for a VM; applied at once if its tap is up."""
        spec = dataclasses.replace(self.spec_of(vm_id), net=net)
        self._remember(spec)
        if self.network is not None and vm_id in self._nets:
            self._nets[vm_id] = net
            await self._apply_rules()

    def _remember(self, spec: NodeVmSpec) -> None:
        self._specs[spec.vm_id] = spec
        (self.workdir(spec.vm_id) / SPEC_FILE).write_text(spec.to_json())

    def spec_of(self, vm_id: str) -> NodeVmSpec:
        """The spec the VM was last created or started with; NotFoundError if the node does not hold it."""
        spec = self._specs.get(vm_id)
        if spec is not None:
            return spec
        try:
            spec = NodeVmSpec.from_json((self.workdir(vm_id) / SPEC_FILE).read_text())
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise NotFoundError(f"VM {vm_id} is not on node {self.name}") from exc
        self._specs[vm_id] = spec
        return spec

    def machine_spec(self, spec: NodeVmSpec, restore: RestoreSource | None = None) -> MachineSpec:
        """How to run the VM now. Full VMs: the ISO in the drive and the seed, if any; the firmware boots
        when there is an ISO to boot or an installed OS, else the sheesh kernel boots the disk."""
        wd = self.workdir(spec.vm_id)
        disk = wd / DISK_FILE
        args = (spec.vm_id, spec.cpu, spec.mem_mb, spec.kernel, spec.initrd, disk, wd)
        nic: dict[str, Any] = {}
        if self.has_nic(spec.vm_id):
            if self.network is None or spec.net is None:
                raise NodeError(f"VM {spec.vm_id} has a network device but the node's networking is off")
            nic = {"tap": spec.net.tap, "mac": spec.net.mac}
        if spec.kind != VmKind.FULL:
            return MachineSpec(*args, restore=restore, **nic)
        cdrom = wd / CDROM_FILE
        seed = wd / SEED_FILE
        if cdrom.exists():  # an ISO may install onto the disk: from now on the firmware boots the VM
            (wd / INSTALLED_MARK).touch()
        return MachineSpec(
            *args,
            **nic,
            full=True,
            firmware_boot=cdrom.exists() or (wd / INSTALLED_MARK).exists(),
            cdrom=cdrom if cdrom.exists() else None,
            seed=seed if seed.exists() else None,
        )

    def has_nic(self, vm_id: str) -> bool:
        return (self.workdir(vm_id) / NIC_MARK).exists()

    def _set_nic(self, vm_id: str, nic: bool) -> None:
        mark = self.workdir(vm_id) / NIC_MARK
        if nic:
            mark.touch()
        else:
            mark.unlink(missing_ok=True)

    async def _boot(self, spec: NodeVmSpec, restore: RestoreSource | None = None) -> None:
        """Start the machine and wait for its agent; a restored machine's first request is the identity
        refresh (fresh entropy, current time, new boot id), which doubles as the readiness probe. A full VM
        booting its firmware (an ISO or an installed OS) has no agent: it is up once the process runs."""
        started = time.monotonic()
        if restore is None:  # a fresh boot gets a NIC whenever the node has networking
            self._set_nic(spec.vm_id, self.network is not None and spec.net is not None)
        machine = self.machine_spec(spec, restore)
        await self._plug(spec)
        plugged = time.monotonic()
        try:
            await self.driver.start(machine)
        except VmmError as exc:
            raise NodeError(f"VM {spec.vm_id} failed to start: {exc.message}") from exc
        running = time.monotonic()
        if machine.firmware_boot:
            took = (running - started) * 1000
            log.info("%s: firmware boot (cdrom %s), VMM up in %.0f ms", spec.vm_id, machine.cdrom, took)
            return
        try:
            probe: dict[str, Any] = {}
            if restore is not None:  # the NIC settings ride along (one guest round trip less per clone)
                seed = base64.b64encode(os.urandom(64)).decode()
                probe = {"op": "refresh", "seed": seed, "time_ns": time.time_ns()}
                if (net_request := self._guest_net_request(spec)) is not None:
                    probe["net"] = net_request
            answer = await self._guest(spec.vm_id).wait_ready(
                self.boot_timeout_s, alive=lambda: self.driver.is_running(spec.vm_id), **probe
            )
            ready = time.monotonic()
            if "net" not in answer:  # a fresh boot (or an agent too old to take ``net`` with ``refresh``)
                await self._configure_guest_net(spec)
        except UnavailableError as exc:
            await self._drop(spec.vm_id)
            tail = self.serial_tail(spec.vm_id, 15)
            raise NodeError(f"VM {spec.vm_id} did not come up: {exc.message}\n{tail}".strip()) from exc
        log.info(
            "%s: network plugged in %.0f ms, VMM up after %.0f ms, agent after %.0f ms, NIC set after %.0f more ms",
            spec.vm_id,
            (plugged - started) * 1000,
            (running - plugged) * 1000,
            (ready - running) * 1000,
            (time.monotonic() - ready) * 1000,
        )

    async def create(self, spec: NodeVmSpec) -> None:
        """Make the VM's disk overlay and boot it (or restore ``spec.snapshot_id``); returns once its guest
        agent answers. A restored VM gets fresh entropy, the current time and a new boot id."""
        wd = self.workdir(spec.vm_id)
        wd.mkdir(parents=True, exist_ok=True)
        self._remember(spec)
        if spec.snapshot_id is not None:
            await self._restore(spec, spec.snapshot_id)
            return
        try:
            await self.driver.create_disk(spec.rootfs, wd / DISK_FILE, spec.disk_size_mb)
        except VmmError as exc:
            raise NodeError(f"cannot create disk for {spec.vm_id}: {exc.message}") from exc
        await self._boot(spec)

    async def _restore(self, spec: NodeVmSpec, snapshot_id: str) -> None:
        snap = self.snapshots_dir / snapshot_id
        if not (snap / SNAPSHOT_STATE).exists():
            raise NotFoundError(f"snapshot {snapshot_id} has no files on node {self.name}")
        memory = snap / SNAPSHOT_MEMORY
        marks = [time.monotonic()]
        try:
            await self.driver.create_disk_from(snap / SNAPSHOT_DISK, self.workdir(spec.vm_id) / DISK_FILE)
        except VmmError as exc:
            raise NodeError(f"cannot create disk for {spec.vm_id}: {exc.message}") from exc
        marks.append(time.monotonic())
        try:  # snapshots from before networking have no machine file and no NIC
            saved = json.loads((snap / SNAPSHOT_MACHINE).read_text())
        except (OSError, ValueError):
            saved = {}
        self._set_nic(spec.vm_id, bool(saved.get("nic")))
        if not saved.get("nic") and self.network is not None:
            log.warning("%s: snapshot %s has no network device; the VM has no network", spec.vm_id, snapshot_id)
        await self._boot(spec, RestoreSource(snap / SNAPSHOT_STATE, memory if memory.exists() else None))
        marks.append(time.monotonic())
        guest = self._guest(spec.vm_id)
        log.info(
            "restored %s from %s: disk %.0f ms, machine+agent+identity %.0f ms",
            spec.vm_id,
            snapshot_id,
            *((b - a) * 1000 for a, b in itertools.pairwise(marks)),
        )
        if spec.snapshot_disk_mb is not None and spec.disk_size_mb > spec.snapshot_disk_mb:
            try:
                await self.driver.resize_disk(spec.vm_id, spec.disk_size_mb)
            except VmmError as exc:
                raise NodeError(f"cannot grow the disk of {spec.vm_id}: {exc.message}") from exc
            await guest.call(Op.RESIZE_FS, 10)

    async def snapshot(self, vm_id: str, snapshot_id: str, sync_guest: bool = True) -> float:
        """Flush the guest's file systems (unless ``sync_guest`` is False: a paused guest cannot answer), then
        save the machine under ``snapshot_id``; returns the save time in ms. The VM keeps running (or stays
        paused)."""
        self._require_running(vm_id)
        if sync_guest:
            with contextlib.suppress(SheeshError):
                await self._guest(vm_id).call(Op.SYNC, 30)
        dest = self.snapshots_dir / snapshot_id
        try:
            files = await self.driver.snapshot(vm_id, dest)
        except VmmError as exc:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            raise NodeError(f"snapshot of {vm_id} failed: {exc.message}") from exc
        (dest / SNAPSHOT_MACHINE).write_text(json.dumps({"nic": self.has_nic(vm_id)}))
        return files.save_ms

    async def ping(self, vm_id: str) -> dict[str, Any]:
        self._require_running(vm_id)
        return await self._guest(vm_id).call(Op.PING, 5)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.snapshots_dir / snapshot_id, True)

    async def pause(self, vm_id: str) -> None:
        await self._vcpus(vm_id, self.driver.pause)

    async def resume(self, vm_id: str) -> None:
        await self._vcpus(vm_id, self.driver.resume)

    async def _vcpus(self, vm_id: str, action: Callable[[str], Awaitable[None]]) -> None:
        self._require_running(vm_id)
        try:
            await action(vm_id)
        except VmmError as exc:
            raise NodeError(exc.message) from exc

    async def start(self, spec: NodeVmSpec) -> None:
        """Boot an existing (stopped) VM from its disk."""
        if not (self.workdir(spec.vm_id) / DISK_FILE).exists():
            raise NotFoundError(f"disk of VM {spec.vm_id} is missing on node {self.name}")
        self._remember(spec)
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
        net = self._nets.get(vm_id)
        if net is None:
            with contextlib.suppress(SheeshError):
                net = self.spec_of(vm_id).net
        await self._unplug(vm_id, net)
        self._specs.pop(vm_id, None)
        await asyncio.to_thread(shutil.rmtree, self.workdir(vm_id), True)

    async def _drop(self, vm_id: str) -> None:
        client = self._guests.pop(vm_id, None)
        if client is not None:
            await client.close()
        await self.driver.kill(vm_id)

    def is_running(self, vm_id: str) -> bool:
        """Whether the VM's machine runs (a VM the node is restarting counts as running)."""
        return self.driver.is_running(vm_id) or vm_id in self._restarting

    def exit_reason(self, vm_id: str) -> str | None:
        return self.driver.exit_reason(vm_id)

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
            try:
                await self.driver.change_cdrom(vm_id, iso)
            except VmmError as exc:
                raise NodeError(f"cannot change the CD-ROM of {vm_id}: {exc.message}") from exc

    async def eject_cdrom(self, vm_id: str) -> None:
        """Remove a full VM's ISO (live from a running VM); the next start boots its disk."""
        self.spec_of(vm_id)
        await self.change_cdrom(vm_id, None)
        (self.workdir(vm_id) / CDROM_FILE).unlink(missing_ok=True)

    async def set_vnc_password(self, vm_id: str, password: str) -> None:
        self._require_running(vm_id)
        try:
            await self.driver.set_vnc_password(vm_id, password)
        except VmmError as exc:
            raise NodeError(f"cannot set the VNC password of {vm_id}: {exc.message}") from exc

    def local_vms(self) -> list[str]:
        """Ids of every VM folder on this node (records or not)."""
        if not self.vms_dir.is_dir():
            return []
        return sorted(p.name for p in self.vms_dir.iterdir() if p.is_dir())

    async def reattach(self, vm_ids: Sequence[str]) -> set[str]:
        """Adopt VMs left running by an earlier manager process; returns the live ones. Their taps are put
        back, then one ruleset with all of them is applied (no VM's rules go missing while others are
        adopted; rules of VMs that died are dropped)."""
        alive: set[str] = set()
        for vm_id in vm_ids:
            if not await self.driver.attach(vm_id, self.workdir(vm_id)):
                continue
            alive.add(vm_id)
            with contextlib.suppress(NotFoundError):
                if (net := self._wired(self.spec_of(vm_id))) is not None and self.network is not None:
                    await self.network.add_tap(net)
                    self._nets[vm_id] = net
        if self.network is not None and alive:
            await self._apply_rules()
        if pruned := self.driver.prune(alive):
            log.info("freed the RAM of %d VMs that stopped while no manager ran: %s", len(pruned), ", ".join(pruned))
        return alive

    async def _run(self, vm_id: str, op: Op, timeout_ms: int | None, **args: Any) -> dict[str, Any]:
        """A process-running guest op: the guest enforces ``timeout_ms``; we wait a grace period longer (a dead
        or restarted agent fails the call at once, see ``GuestClient``)."""
        self._require_running(vm_id)
        wait = (timeout_ms / 1000 if timeout_ms else 24 * 3600) + EXEC_GRACE_S
        return await self._guest(vm_id).call(op, wait, timeout_ms=timeout_ms, **args)

    async def exec(self, vm_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        reply = await self._run(
            vm_id,
            Op.EXEC,
            req.timeout_ms,
            cmd=req.cmd,
            cwd=req.cwd,
            env=req.env,
            output_limit=output_limit,
        )
        return ExecResult(
            exit_code=int(reply["exit_code"]),
            stdout=str(reply["stdout"]),
            stderr=str(reply["stderr"]),
            timed_out=bool(reply.get("timed_out")),
            truncated=bool(reply.get("truncated")),
        )

    async def run_script(
        self, vm_id: str, req: ScriptRequest, allow_net: bool | list[str], output_limit: int
    ) -> ScriptResult:
        reply = await self._run(
            vm_id,
            Op.RUN_TS if req.language == ScriptLanguage.TS else Op.RUN_JS,
            req.timeout_ms,
            code=req.code,
            path=req.path,
            args=req.args,
            env=req.env,
            deno_flags=req.deno_flags,
            output_limit=output_limit,
            allow_net=allow_net,
            error_stack=req.error_stack,
        )
        return ScriptResult(
            exit_code=int(reply["exit_code"]),
            stdout=str(reply["stdout"]),
            stderr=str(reply["stderr"]),
            result=reply.get("result"),
            has_result="result" in reply,
            error=reply.get("error"),
            timed_out=bool(reply.get("timed_out")),
            truncated=bool(reply.get("truncated")),
        )

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes], max_expanded: int) -> dict[str, int]:
        """Stream a tar.gz into the guest (one chunk in flight); extracted only if the whole archive is valid.
        An exception from ``chunks`` aborts the upload in the guest and propagates."""
        self._require_running(vm_id)
        guest = self._guest(vm_id)
        key = (await guest.call(Op.UPLOAD_BEGIN, TRANSFER_TIMEOUT_S, dest=dest, max_bytes=max_expanded))["upload"]
        try:
            async for chunk in _rechunk(chunks, TRANSFER_CHUNK):
                await guest.call(Op.UPLOAD_CHUNK, TRANSFER_TIMEOUT_S, upload=key, data=base64.b64encode(chunk).decode())
        except BaseException:
            with contextlib.suppress(SheeshError):
                await guest.call(Op.UPLOAD_ABORT, TRANSFER_TIMEOUT_S, upload=key)
            raise
        reply = await guest.call(Op.UPLOAD_END, TRANSFER_TIMEOUT_S, upload=key)
        return {"files": int(reply["files"]), "bytes": int(reply["bytes"])}

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        """Start a tar.gz of ``path`` (errors raise here, before any byte) and return its chunk stream."""
        self._require_running(vm_id)
        guest = self._guest(vm_id)
        key = (await guest.call(Op.DOWNLOAD_BEGIN, TRANSFER_TIMEOUT_S, path=path))["download"]

        async def stream() -> AsyncIterator[bytes]:
            done = False
            try:
                while not done:
                    reply = await guest.call(Op.DOWNLOAD_NEXT, TRANSFER_TIMEOUT_S, download=key)
                    done = bool(reply["eof"])
                    if data := base64.b64decode(reply["data"]):
                        yield data
            finally:
                if not done:
                    with contextlib.suppress(SheeshError):
                        await guest.call(Op.DOWNLOAD_CLOSE, TRANSFER_TIMEOUT_S, download=key)

        return stream()

    def _require_running(self, vm_id: str) -> None:
        if not self.driver.is_running(vm_id):
            raise UnavailableError(f"VM {vm_id} is not running")

    def log_path(self, vm_id: str, kind: str) -> Path:
        """File of a log kind: ``serial`` (console), ``stdout`` / ``stderr`` (the VMM process)."""
        return self.workdir(vm_id) / {"serial": SERIAL_LOG, "stdout": STDOUT_LOG, "stderr": STDERR_LOG}[kind]

    def log_tail(self, vm_id: str, kind: str, lines: int) -> list[str]:
        return tail_lines(self.log_path(vm_id, kind), lines)

    def serial_tail(self, vm_id: str, lines: int) -> str:
        return "\n".join(tail_lines(self.workdir(vm_id) / SERIAL_LOG, lines))

    async def close(self) -> None:
        """Disconnect from guests; VM processes keep running (they are re-attached on next start)."""
        for client in list(self._guests.values()):
            await client.close()
        self._guests.clear()
