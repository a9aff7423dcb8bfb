"""VM lifecycle service: validation, placement on the (single) node, state machine, recovery, and the VM's
traffic policy (firewall, port forwards), which changes under the same per-VM lock as the lifecycle. About 400
lines for that reason; what runs inside guests is ``execution.py``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sheesh.config import Settings
from sheesh.control.history import ExecHistory
from sheesh.control.images import resolve_image
from sheesh.control.ipam import allocate_ip, free_port
from sheesh.control.metrics import Metrics
from sheesh.control.nodes import NodeService
from sheesh.control.templates import DEFAULT_DISK_MB, Templates
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, SheeshError, UnavailableError
from sheesh.models import (
    FirewallRule,
    PortForward,
    ProvisionMode,
    Snapshot,
    SnapshotKind,
    TimeoutAction,
    Vm,
    VmKind,
    VmState,
    can_transition,
)
from sheesh.node.contract import NodeClient, NodeVmSpec, VmNet, VmUsage
from sheesh.store.repo import Store

log = logging.getLogger(__name__)

MAX_FIREWALL_RULES = 64
MAX_PORT_FORWARDS = 16

_ACTIVE = (VmState.RUNNING, VmState.STARTING, VmState.CREATING, VmState.STOPPING, VmState.PAUSED)

VmRef = str | Vm
"""A VM for a guest operation (``VmService.running``): its id, or its record as read for the request being served
(saves reading it again: the API's ownership check has just read it)."""


def vm_net(vm: Vm) -> VmNet:
    """The node's view of a VM's address and traffic policy."""
    return VmNet(
        vm_id=vm.id,
        ip=vm.guest_ip,
        allow_ips=tuple(vm.allow_ips),
        outbound_internet=vm.outbound_internet,
        firewall=tuple(vm.firewall),
        ports=tuple(vm.ports),
        vpn_network=vm.vpn_network,
    )


def _pausable(vm: Vm) -> bool:
    """Auto-pause applies to sandboxes used through the API only (not full VMs, forwarded ports or a VPN)."""
    return vm.kind == VmKind.SANDBOX and not vm.ports and not vm.vpn_network


def check_allow_ips(cidrs: list[str], guest_network: str) -> None:
    """Refuse allowlist entries inside the guest network: VMs cannot reach each other (isolated bridge ports,
    no proxy ARP), so such an entry could never work. The gateway (the node itself) is allowed; wider
    networks that merely contain the guest network (0.0.0.0/0) are fine and grant no VM-to-VM traffic."""
    pool = ipaddress.ip_network(guest_network)
    gateway = next(pool.hosts())
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == pool.version and net.subnet_of(pool) and net != ipaddress.ip_network(gateway):  # type: ignore[arg-type]
            raise InvalidInputError(
                f"allowIps entry {cidr} is inside the guest network {guest_network}: VMs cannot reach each other "
                f"(only the node's address {gateway} may be allowed there)"
            )


@dataclass(frozen=True, kw_only=True)
class CreateVm:
    """Validated input of ``POST /v1/vms`` (ranges are checked by the API schema)."""

    cpu: int
    mem_mb: int
    allow_ips: list[str]
    outbound_internet: bool = False
    image_id: str | None = None
    snapshot_id: str | None = None
    disk_size_mb: int | None = None
    owner_id: str | None = None
    kind: VmKind = VmKind.SANDBOX
    timeout_s: int | None = None
    on_timeout: TimeoutAction = TimeoutAction.DELETE


@dataclass
class VmService:
    """All VM operations. Lifecycle operations on one VM are serialised; exec runs concurrently."""

    store: Store
    nodes: NodeService
    settings: Settings
    templates: Templates
    metrics: Metrics | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _alloc: asyncio.Lock = field(default_factory=asyncio.Lock)
    _last_used: dict[str, float] = field(default_factory=dict)
    """When each VM's guest was last used (monotonic s), for auto-pause."""
    _in_use: Counter[str] = field(default_factory=Counter)
    """Guest operations in flight per VM (an exec, a stream, a transfer): such a VM is never auto-paused."""
    _auto_pausing: set[str] = field(default_factory=set)
    history: ExecHistory = field(init=False)
    """The VMs' execution history (written by ``ExecService``, removed here with its VM)."""

    def __post_init__(self) -> None:
        self.history = ExecHistory(self.store)

    @contextlib.asynccontextmanager
    async def _locked(self, vm_id: str) -> AsyncIterator[Vm]:
        lock = self._locks.setdefault(vm_id, asyncio.Lock())
        async with lock:
            yield self._reachable(self.get(vm_id))

    def _reachable(self, vm: Vm) -> Vm:
        if vm.state == VmState.UNREACHABLE:
            raise UnavailableError(f"VM {vm.id} is on node {vm.node}, which is unreachable")
        return vm

    def _set_state(self, vm: Vm, state: VmState, error: str | None = None) -> None:
        if vm.state != state and not can_transition(vm.state, state):
            raise ConflictError(f"VM {vm.id} cannot go from {vm.state} to {state}")
        vm.state = state
        vm.error = error
        if state != VmState.PAUSED:
            vm.auto_paused = False
        self.store.save_vm(vm)

    def _spec(self, vm: Vm, source: Snapshot | None = None) -> NodeVmSpec:
        """Node spec of ``vm``; with ``source`` the node restores that snapshot instead of booting."""
        image = resolve_image(self.store, vm.image_id)
        return NodeVmSpec(
            vm_id=vm.id,
            cpu=vm.cpu,
            mem_mb=vm.mem_mb,
            kernel=image.path / "vmlinux",
            initrd=image.path / "initrd.cpio",
            rootfs=image.path / "rootfs.ext4",
            disk_size_mb=vm.disk_size_mb,
            snapshot_id=source.id if source else None,
            snapshot_disk_mb=source.disk_size_mb if source else None,
            kind=vm.kind,
            net=vm_net(vm),
        )

    def list_vms(self) -> list[Vm]:
        return self.store.list_vms()

    def version(self) -> int:
        """Moves on with every VM write in any replica (``Store.vms_version``)."""
        return self.store.vms_version()

    def get(self, vm_id: str) -> Vm:
        vm = self.store.get_vm(vm_id)
        if vm is None:
            raise NotFoundError(f"VM {vm_id} not found")
        return vm

    async def create(self, req: CreateVm) -> Vm:
        """Create a VM RUNNING: restored from ``snapshot_id``, else from the shape's template snapshot when
        there is one (``provisionMode`` "snapshot"), else booted (and a template is built for next time).
        On failure nothing is left behind."""
        source: Snapshot | None = None
        full = req.kind == VmKind.FULL
        check_allow_ips(req.allow_ips, self.settings.guest_network)
        expires_at = self._expiry(req.timeout_s)
        if full and req.snapshot_id is not None:
            raise InvalidInputError("full VMs boot from the image or their own disk, not from a snapshot")
        if req.snapshot_id is not None:
            source = self.snapshot(req.snapshot_id)
            if (req.cpu, req.mem_mb) != (source.cpu, source.mem_mb):
                raise InvalidInputError(
                    f"cpu and memMb must match the snapshot ({source.cpu} vCPU, {source.mem_mb} MiB)"
                )
            if req.image_id is not None and req.image_id != source.image_id:
                raise InvalidInputError(f"imageId must match the snapshot's image {source.image_id}")
        node_name = await self.nodes.place(req.cpu, req.mem_mb, only=source.node if source else None)
        node = self.nodes.client(node_name)
        image = resolve_image(self.store, source.image_id if source else req.image_id)
        base_mb = source.disk_size_mb if source else image.image.rootfs_size_mb
        disk_mb = req.disk_size_mb if req.disk_size_mb is not None else max(DEFAULT_DISK_MB, base_mb)
        if disk_mb < base_mb:
            what = "snapshot's disk" if source else "image's rootfs"
            raise InvalidInputError(f"diskSizeMb must be >= the {what} size ({base_mb} MiB)")
        if disk_mb > self.settings.max_disk_size_mb:
            raise InvalidInputError(f"diskSizeMb must be <= {self.settings.max_disk_size_mb}")
        if source is None and self.settings.templates and not full:
            source = self.templates.find(node_name, image.image.id, req.cpu, req.mem_mb)
            if source is None:
                self.templates.ensure(node_name, image.image.id, req.cpu, req.mem_mb)
            elif disk_mb < source.disk_size_mb:
                source = None  # a smaller disk than the template's: boot
        async with self._alloc:
            vm = Vm(
                id=f"vm-{secrets.token_hex(6)}",
                state=VmState.CREATING,
                cpu=req.cpu,
                mem_mb=req.mem_mb,
                allow_ips=list(req.allow_ips),
                outbound_internet=req.outbound_internet,
                image_id=image.image.id,
                disk_size_mb=disk_mb,
                guest_ip=allocate_ip(self.settings.guest_network, self.store.used_ips()),
                created_at=datetime.now(UTC),
                provision_mode=ProvisionMode.SNAPSHOT if source else ProvisionMode.BOOT,
                node=node_name,
                snapshot_id=source.id if source else None,
                owner_id=req.owner_id,
                kind=req.kind,
                expires_at=expires_at,
                on_timeout=req.on_timeout,
            )
            self.store.add_vm(vm)
        started = time.monotonic()
        async with self._locked(vm.id) as vm:
            try:
                await node.create(self._spec(vm, source))
            except BaseException:
                with contextlib.suppress(Exception):
                    await node.destroy(vm.id)
                self.store.delete_vm(vm.id)
                self._locks.pop(vm.id, None)
                if self.metrics is not None:
                    self.metrics.creates.labels("failed").inc()
                raise
            self._set_state(vm, VmState.RUNNING)
            if self.metrics is not None:
                self.metrics.creates.labels("created").inc()
                self.metrics.create_seconds.observe(time.monotonic() - started)
            return vm

    def _expiry(self, timeout_s: int | None) -> datetime | None:
        if timeout_s is None:
            return None
        if timeout_s > self.settings.vm_max_timeout_s:
            raise InvalidInputError(f"timeoutS must be <= {self.settings.vm_max_timeout_s}")
        return datetime.now(UTC) + timedelta(seconds=timeout_s)

    async def set_timeout(self, vm_id: str, timeout_s: int | None, on_timeout: TimeoutAction | None) -> Vm:
        """The VM's timeout runs out ``timeout_s`` seconds from now (None: never); ``on_timeout`` (unchanged
        when None) says whether it is then deleted or paused."""
        async with self._locked(vm_id) as vm:
            if vm.state in (VmState.CREATING, VmState.DELETING):
                raise ConflictError(f"VM {vm_id} is {vm.state}")
            vm.expires_at = self._expiry(timeout_s)
            if on_timeout is not None:
                vm.on_timeout = on_timeout
            self.store.save_vm(vm)
            return vm

    async def expire(self, now: datetime | None = None) -> list[str]:
        """Delete (or pause) the VMs whose timeout ran out; returns their ids. A VM of an unreachable node
        waits for its node; one that cannot be paused (not running) is deleted."""
        now = now or datetime.now(UTC)
        done: list[str] = []
        for vm in self.store.list_vms():
            if vm.expires_at is None or vm.expires_at > now or vm.state == VmState.UNREACHABLE:
                continue
            if vm.state in (VmState.CREATING, VmState.DELETING) or self._busy(vm.id):
                continue
            try:
                if vm.on_timeout == TimeoutAction.PAUSE and vm.state in (VmState.RUNNING, VmState.PAUSED):
                    if vm.state == VmState.RUNNING:
                        await self.pause(vm.id)
                    await self.set_timeout(vm.id, None, None)
                    log.info("VM %s timed out: paused", vm.id)
                else:
                    await self.delete(vm.id)
                    log.info("VM %s timed out: deleted", vm.id)
                done.append(vm.id)
            except SheeshError as exc:
                log.warning("VM %s timed out but could not be %s: %s", vm.id, vm.on_timeout, exc.message)
        return done

    def _busy(self, vm_id: str) -> bool:
        lock = self._locks.get(vm_id)
        return lock is not None and lock.locked()

    def snapshot(self, snapshot_id: str) -> Snapshot:
        snap = self.store.get_snapshot(snapshot_id)
        if snap is None or snap.kind != SnapshotKind.USER:
            raise NotFoundError(f"snapshot {snapshot_id} not found")
        return snap

    def list_snapshots(self) -> list[Snapshot]:
        return [s for s in self.store.list_snapshots() if s.kind == SnapshotKind.USER]

    async def create_snapshot(self, vm_id: str) -> Snapshot:
        """Save memory, device state and disk of a running or paused VM (which keeps its state)."""
        async with self._locked(vm_id) as vm:
            if vm.state not in (VmState.RUNNING, VmState.PAUSED):
                raise ConflictError(f"VM {vm_id} is {vm.state}; only a running or paused VM can be snapshotted")
            if vm.kind == VmKind.FULL:
                raise ConflictError(f"VM {vm_id} is a full VM; snapshots and forks are for sandbox VMs")
            snap_id = f"snap-{secrets.token_hex(6)}"
            saved = await self.nodes.of(vm).snapshot(vm_id, snap_id, sync_guest=vm.state == VmState.RUNNING)
            snap = Snapshot(
                id=snap_id,
                vm_id=vm_id,
                created_at=datetime.now(UTC),
                cpu=vm.cpu,
                mem_mb=vm.mem_mb,
                image_id=vm.image_id,
                disk_size_mb=vm.disk_size_mb,
                kind=SnapshotKind.USER,
                save_ms=saved.save_ms,
                owner_id=vm.owner_id,
                node=vm.node,
            )
            self.store.add_snapshot(snap)
            return snap

    async def delete_snapshot(self, snapshot_id: str) -> None:
        snap = self.snapshot(snapshot_id)
        users = [v.id for v in self.store.list_vms() if v.snapshot_id == snapshot_id]
        if users:
            raise ConflictError(f"snapshot {snapshot_id} is in use by {', '.join(users)}")
        await self.nodes.client(snap.node).delete_snapshot(snapshot_id)
        self.store.delete_snapshot(snapshot_id)

    async def fork(self, vm_id: str, count: int) -> tuple[Snapshot, list[Vm], list[str]]:
        """Snapshot a live VM and restore ``count`` clones of it, each with a fresh identity. Returns the
        snapshot, the clones made and why the others failed (all failed: the first error is raised)."""
        snap = await self.create_snapshot(vm_id)
        vm = self.get(vm_id)
        req = CreateVm(
            cpu=vm.cpu,
            mem_mb=vm.mem_mb,
            allow_ips=vm.allow_ips,
            outbound_internet=vm.outbound_internet,
            image_id=vm.image_id,
            snapshot_id=snap.id,
            disk_size_mb=vm.disk_size_mb,
            owner_id=vm.owner_id,
        )
        clones = await asyncio.gather(*(self.create(req) for _ in range(count)), return_exceptions=True)
        made = [c for c in clones if isinstance(c, Vm)]
        failed = [c for c in clones if isinstance(c, BaseException)]
        if failed and not made:
            raise failed[0]
        for exc in failed:
            log.warning("fork of %s: a clone failed: %r", vm_id, exc)
        return snap, made, [exc.message if isinstance(exc, SheeshError) else "internal error" for exc in failed]

    async def pause(self, vm_id: str) -> None:
        async with self._locked(vm_id) as vm:
            if vm.state != VmState.RUNNING:
                raise ConflictError(f"VM {vm_id} is {vm.state}; only a running VM can be paused")
            await self.nodes.of(vm).pause(vm_id)
            self._set_state(vm, VmState.PAUSED)

    async def resume(self, vm_id: str) -> None:
        async with self._locked(vm_id) as vm:
            if vm.state != VmState.PAUSED:
                raise ConflictError(f"VM {vm_id} is {vm.state}; only a paused VM can be resumed")
            await self.nodes.of(vm).resume(vm_id)
            self._set_state(vm, VmState.RUNNING)

    async def start(self, vm_id: str) -> None:
        async with self._locked(vm_id) as vm:
            if vm.state not in (VmState.STOPPED, VmState.ERROR):
                raise ConflictError(f"VM {vm_id} is {vm.state}; only a stopped VM can be started")
            self._set_state(vm, VmState.STARTING)
            try:
                await self.nodes.of(vm).start(self._spec(vm))
            except SheeshError as exc:
                self._set_state(vm, VmState.ERROR, exc.message)
                raise
            self._set_state(vm, VmState.RUNNING)

    async def stop(self, vm_id: str) -> None:
        async with self._locked(vm_id) as vm:
            if vm.state not in (VmState.RUNNING, VmState.PAUSED):
                raise ConflictError(f"VM {vm_id} is {vm.state}; only a running VM can be stopped")
            node = self.nodes.of(vm)
            if vm.state == VmState.PAUSED:
                await node.resume(vm_id)
            self._set_state(vm, VmState.STOPPING)
            try:
                await node.stop(vm_id)
            except SheeshError as exc:
                self._set_state(vm, VmState.ERROR, exc.message)
                raise
            self._set_state(vm, VmState.STOPPED)

    async def delete(self, vm_id: str) -> None:
        async with self._locked(vm_id) as vm:
            node = self.nodes.of(vm)
            self._set_state(vm, VmState.DELETING)
            try:
                await node.destroy(vm_id)
            except SheeshError as exc:
                self._set_state(vm, VmState.ERROR, exc.message)
                raise
            self.history.flush()  # the entries of its last calls go with it
            self.store.delete_vm(vm_id)
        self._locks.pop(vm_id, None)

    async def running(self, vm: VmRef, what: str) -> Vm:
        """The VM, running by the store (resumed first if auto-pause paused it), for a guest operation ``what``.
        Whether its machine still runs is left to the operation itself, run under ``machine_checked``: its node
        refuses it at once otherwise, and asking first cost every guest operation on a remote node a round trip.

        :raise ConflictError: it is not running (nor auto-paused)
        """
        vm = await self._awake(self._reachable(vm if isinstance(vm, Vm) else self.get(vm)))
        if vm.state != VmState.RUNNING:
            raise ConflictError(f"VM {vm.id} is {vm.state}; {what} needs a running VM")
        return vm

    @contextlib.asynccontextmanager
    async def machine_checked(self, vm: Vm) -> AsyncIterator[None]:
        """Run a guest operation on ``vm`` (``running``). When its node answers it as unavailable and says the
        VM's machine no longer runs, the store learns it (``reconcile``) and the caller gets ConflictError, as
        for any VM that is not running; otherwise the node's error stands (its agent may just be busy)."""
        try:
            yield
        except UnavailableError as exc:
            try:
                gone = not await self.nodes.of(vm).is_running(vm.id)
            except SheeshError:
                gone = False  # (the node itself is unreachable: its error says so)
            if not gone:
                raise
            await self.reconcile()
            raise ConflictError(f"VM {vm.id} is not running") from exc

    async def touch(self, vm_id: str) -> None:
        """The VM's guest is about to be used outside the API (a console): resume it if auto-pause paused it."""
        await self._awake(self.get(vm_id))

    async def _awake(self, vm: Vm) -> Vm:
        """``vm`` counted as used now; resumed first if auto-pause paused it (or is pausing it)."""
        self._last_used[vm.id] = time.monotonic()
        if (vm.state == VmState.PAUSED and vm.auto_paused) or vm.id in self._auto_pausing:
            return await self._wake(vm.id)
        return vm

    @contextlib.asynccontextmanager
    async def in_use(self, vm: VmRef, what: str) -> AsyncIterator[Vm]:
        """``running``, and the VM counts as in use (never auto-paused) until the block ends, which runs
        ``machine_checked``."""
        async with self.in_use_after(vm, what) as (running, release):
            try:
                yield running
            finally:
                release()

    @contextlib.asynccontextmanager
    async def in_use_after(self, vm: VmRef, what: str) -> AsyncIterator[tuple[Vm, Callable[[], None]]]:
        """``in_use`` for an operation the block starts and that goes on after it (a stream, a download): the
        VM stays held until the operation calls the release the block was handed (once; later calls do
        nothing). A block that fails, or is cancelled, releases it at once."""
        vm = await self.running(vm, what)
        vm_id = vm.id
        self.hold(vm_id)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.release(vm_id)

        try:
            async with self.machine_checked(vm):
                yield vm, release
        except BaseException:
            release()
            raise

    def hold(self, vm_id: str) -> None:
        """One more guest operation in flight on the VM (``release`` ends it)."""
        self._in_use[vm_id] += 1

    def release(self, vm_id: str) -> None:
        self._in_use[vm_id] -= 1
        if self._in_use[vm_id] <= 0:
            del self._in_use[vm_id]
        self._last_used[vm_id] = time.monotonic()

    async def _wake(self, vm_id: str) -> Vm:
        """Resume a VM auto-pause paused (once, however many requests arrive together)."""
        async with self._locked(vm_id) as vm:
            if vm.state == VmState.PAUSED and vm.auto_paused:
                t0 = time.monotonic()
                await self.nodes.of(vm).resume(vm_id)
                self._set_state(vm, VmState.RUNNING)
                log.info("VM %s resumed from auto-pause in %.0f ms", vm_id, (time.monotonic() - t0) * 1000)
            return vm

    async def auto_pause(self) -> list[str]:
        """Pause the sandboxes nothing has used for ``settings.auto_pause_s`` (0: none); returns their ids.

        Skipped: VMs with a guest operation in flight or a lifecycle change under way, full VMs, and VMs
        reached directly over the network (forwarded ports, a VPN), whose use the control plane cannot see.
        A VM first seen here counts as used now.
        """
        idle_s = self.settings.auto_pause_s
        if idle_s <= 0:
            return []
        now = time.monotonic()
        paused: list[str] = []
        vms = self.store.list_vms()
        for vm in vms:
            last = self._last_used.setdefault(vm.id, now)
            if vm.state != VmState.RUNNING or now - last < idle_s or not _pausable(vm):
                continue
            if self._in_use[vm.id] or self._busy(vm.id):
                continue
            try:
                async with self._locked(vm.id) as cur:
                    if cur.state != VmState.RUNNING or self._in_use[vm.id] or self._last_used[vm.id] != last:
                        continue
                    self._auto_pausing.add(vm.id)  # a request arriving now waits and resumes it
                    try:
                        await self.nodes.of(cur).pause(vm.id)
                        cur.auto_paused = True
                        self._set_state(cur, VmState.PAUSED)
                    finally:
                        self._auto_pausing.discard(vm.id)
            except SheeshError as exc:
                log.warning("auto-pause of VM %s failed: %s", vm.id, exc.message)
                continue
            log.info("VM %s auto-paused after %.0f s unused", vm.id, now - last)
            paused.append(vm.id)
        for gone in self._last_used.keys() - {vm.id for vm in vms}:
            del self._last_used[gone]
        return paused

    async def add_firewall_rule(self, vm_id: str, rule: FirewallRule) -> list[FirewallRule]:
        """Append an inbound rule (first match wins; traffic matching none is dropped)."""
        async with self._locked(vm_id) as vm:
            if len(vm.firewall) >= MAX_FIREWALL_RULES:
                raise InvalidInputError(f"a VM has at most {MAX_FIREWALL_RULES} firewall rules")
            vm.firewall = [*vm.firewall, rule]
            await self._apply_network(vm)
            return vm.firewall

    async def clear_firewall(self, vm_id: str) -> None:
        """Remove every inbound rule: all inbound traffic is dropped."""
        async with self._locked(vm_id) as vm:
            vm.firewall = []
            await self._apply_network(vm)

    async def add_port(self, vm_id: str, guest_port: int, protocol: str) -> PortForward:
        """Forward a free node port (from ``port_forward_range``) to ``guest_port`` of the VM."""
        async with self._locked(vm_id) as vm:
            if len(vm.ports) >= MAX_PORT_FORWARDS:
                raise InvalidInputError(f"a VM has at most {MAX_PORT_FORWARDS} port forwards")
            if any(p.guest_port == guest_port and p.protocol == protocol for p in vm.ports):
                raise ConflictError(f"{protocol} port {guest_port} of VM {vm_id} is already forwarded")
            async with self._alloc:
                taken = {p.host_port for v in self.store.list_vms() for p in v.ports}
                forward = PortForward(
                    guest_port, free_port(self.settings.port_forward_range, taken, protocol), protocol
                )
                vm.ports = [*vm.ports, forward]
                await self._apply_network(vm)
            return forward

    async def remove_port(self, vm_id: str, host_port: int) -> None:
        async with self._locked(vm_id) as vm:
            if not any(p.host_port == host_port for p in vm.ports):
                raise NotFoundError(f"VM {vm_id} has no port forward on node port {host_port}")
            vm.ports = [p for p in vm.ports if p.host_port != host_port]
            await self._apply_network(vm)

    async def set_vpn_network(self, vm_id: str, network: str | None) -> None:
        """Let the clients of the VM's VPN (addresses in ``network``) reach it; None: no VPN."""
        async with self._locked(vm_id) as vm:
            vm.vpn_network = network
            await self._apply_network(vm)

    async def _apply_network(self, vm: Vm) -> None:
        """Save the VM's policy and push it to the node (which applies it now if the VM's tap is up)."""
        self.store.save_vm(vm)
        if vm.state not in (VmState.CREATING, VmState.DELETING):
            await self.nodes.of(vm).update_network(vm.id, vm_net(vm))

    async def eject_cdrom(self, vm_id: str) -> None:
        """Eject the ISO of a full VM (inserted through the node's /downloadIso or /uploadIso)."""
        async with self._locked(vm_id) as vm:
            if vm.kind != VmKind.FULL:
                raise ConflictError(f"VM {vm_id} is a sandbox VM; only full VMs have a CD-ROM drive")
            if vm.state in (VmState.CREATING, VmState.DELETING):
                raise ConflictError(f"VM {vm_id} is {vm.state}")
            await self.nodes.of(vm).eject_cdrom(vm_id)

    async def logs(self, vm_id: str, kind: str, lines: int) -> list[str]:
        return await self.node_of(vm_id).log_tail(vm_id, kind, lines)

    async def usage(self, vm_id: str) -> VmUsage | None:
        """CPU seconds and memory of the VM's machine as its node reads them (None: not running)."""
        return await self.node_of(vm_id).usage(vm_id)

    def node_of(self, vm_id: str) -> NodeClient:
        """The client of the node VM ``vm_id`` is on; UnavailableError naming the node when it is unreachable."""
        return self.nodes.of(self.get(vm_id))

    async def reconcile(self) -> None:
        """Mark RUNNING VMs whose process has gone (guest powered off, crashed) as STOPPED; VMs of unreachable
        nodes are left to the node's return (``NodeService.heartbeat``). A remote node is asked only about VMs
        its last heartbeat did not list as running."""
        reported = self.nodes.reported_running()
        for vm in self.store.list_vms():
            if vm.state not in (VmState.RUNNING, VmState.PAUSED) or self._busy(vm.id):
                continue
            if vm.id in reported.get(vm.node, ()):
                continue
            try:
                node = self.nodes.of(vm)
                if await node.is_running(vm.id):
                    continue
                reason = await node.exit_reason(vm.id)
            except UnavailableError:
                continue
            log.info("VM %s is no longer running: %s", vm.id, reason or "powered off")
            with contextlib.suppress(ConflictError):
                self._set_state(vm, VmState.STOPPED, reason)

    async def prebuild_templates(self) -> None:
        """Start building the templates of ``template_shapes`` (for the default image, on the node a create of
        that shape would go to) where they are missing: the first create of such a shape restores too."""
        for cpu, mem_mb in self.settings.prebuilt_shapes():
            try:
                node_name = await self.nodes.place(cpu, mem_mb)
                image = resolve_image(self.store, None)
            except SheeshError as exc:
                log.warning("no template built at start for %d vCPU, %d MiB: %s", cpu, mem_mb, exc.message)
                continue
            self.templates.ensure(node_name, image.image.id, cpu, mem_mb)

    async def recover(self) -> None:
        """After a restart: roll back interrupted creates (the caller never got the VM: its machine may lack
        its network or identity refresh), stop interrupted starts, finish interrupted deletes, re-attach live
        VMs, mark dead ones STOPPED, and remove VM folders without a record (a crash during a template
        build). All of it on the embedded node: remote nodes keep running without this process, and their VMs
        are checked by ``reconcile`` and their heartbeats."""
        local = self.nodes.local
        known = {vm.id for vm in self.store.list_vms()}
        for orphan in await local.local_vms():
            if orphan not in known:
                log.info("removing leftover VM folder %s", orphan)
                await local.destroy(orphan)
        for vm in self.store.list_vms():
            if vm.node != local.name:
                continue
            if vm.state in (VmState.DELETING, VmState.CREATING):
                log.info("rolling back VM %s (%s when the service stopped)", vm.id, vm.state)
                await local.destroy(vm.id)
                self.store.delete_vm(vm.id)
            elif vm.state == VmState.STARTING:
                if await local.reattach([vm.id]):
                    await local.stop(vm.id)
                vm.state, vm.error = VmState.STOPPED, "the start was interrupted by a restart of the service"
                self.store.save_vm(vm)
        active = [vm for vm in self.store.list_vms() if vm.state in _ACTIVE and vm.node == local.name]
        alive = await local.reattach([vm.id for vm in active])
        for vm in active:
            kept = VmState.PAUSED if vm.state == VmState.PAUSED else VmState.RUNNING
            if vm.id in alive:
                vm.state, vm.error = kept, None
            else:
                vm.state = VmState.STOPPED
                vm.error = "the VM's machine ended while the service was not running"
            self.store.save_vm(vm)
        await self.templates.prune_stale()
