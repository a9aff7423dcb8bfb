"""Template snapshots: one per (node, image, cpu, memory) shape, taken from a freshly booted VM once its guest
agent (and its pool of pre-started shells) is ready. New VMs of that shape on that node restore it instead of
booting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sheesh.control.images import resolve_image
from sheesh.control.ipam import template_ip
from sheesh.errors import SheeshError
from sheesh.models import TEMPLATE_SNAPSHOT_PREFIX, ExecRequest, Snapshot, SnapshotKind
from sheesh.node.contract import NodeClient, NodeVmSpec, VmNet
from sheesh.store.repo import Store

log = logging.getLogger(__name__)
Shape = tuple[str, str, int, int]
"""(node, image id, vCPUs, memory in MiB)."""
DEFAULT_DISK_MB = 1024
GENERATION = TEMPLATE_SNAPSHOT_PREFIX + "n1-"
"""Id prefix of current templates; templates of older machine layouts (before VMs had a NIC) are not used and
are pruned once nothing builds on them."""


@dataclass
class Templates:
    """Finds ready templates and builds missing ones in the background (one build per shape at a time)."""

    store: Store
    client: Callable[[str], NodeClient]
    """The client of a node by name."""
    warm_timeout_s: float = 30.0
    guest_network: str | None = None
    """Template VMs get the pool's reserved template address (clones take their own at restore)."""
    _building: dict[Shape, asyncio.Task[None]] = field(default_factory=dict)

    def find(self, node: str, image_id: str, cpu: int, mem_mb: int) -> Snapshot | None:
        for snap in self.store.list_snapshots():
            if snap.kind != SnapshotKind.TEMPLATE or not snap.id.startswith(GENERATION):
                continue
            if (snap.node, snap.image_id, snap.cpu, snap.mem_mb) == (node, image_id, cpu, mem_mb):
                return snap
        return None

    async def prune_stale(self) -> None:
        """Delete templates of older generations that no VM's disk builds on."""
        in_use = {vm.snapshot_id for vm in self.store.list_vms()}
        for snap in self.store.list_snapshots():
            if snap.kind == SnapshotKind.TEMPLATE and not snap.id.startswith(GENERATION) and snap.id not in in_use:
                log.info("removing template %s of an older generation", snap.id)
                with contextlib.suppress(SheeshError):
                    await self.client(snap.node).delete_snapshot(snap.id)
                    self.store.delete_snapshot(snap.id)

    def ensure(self, node: str, image_id: str, cpu: int, mem_mb: int) -> None:
        """Start building the template for this shape unless it exists or is being built."""
        shape = (node, image_id, cpu, mem_mb)
        task = self._building.get(shape)
        if self.find(*shape) is not None or (task is not None and not task.done()):
            return
        self._building[shape] = asyncio.create_task(self._build(shape))

    async def wait_idle(self) -> None:
        """Wait for running builds (tests, shutdown)."""
        tasks = [t for t in self._building.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _settle(self, node: NodeClient, vm_id: str) -> None:
        """Let boot-time work finish (file-system resize, shell pool) so that clones do not redo it."""
        settle = "while pgrep -x resize2fs >/dev/null; do sleep 0.05; done; sync"
        await node.exec(vm_id, ExecRequest(settle, timeout_ms=int(self.warm_timeout_s * 1000)), 4096)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.warm_timeout_s
        while int((await node.ping(vm_id)).get("warm", 0)) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)

    async def _build(self, shape: Shape) -> None:
        node_name, image_id, cpu, mem_mb = shape
        image = resolve_image(self.store, image_id)
        vm_id = f"tpl-{secrets.token_hex(6)}"
        snap_id = f"{GENERATION}{secrets.token_hex(6)}"
        disk_mb = max(DEFAULT_DISK_MB, image.image.rootfs_size_mb)  # the common size: no resize on restore
        net = VmNet(vm_id=vm_id, ip=template_ip(self.guest_network)) if self.guest_network else None
        spec = NodeVmSpec(
            vm_id=vm_id,
            cpu=cpu,
            mem_mb=mem_mb,
            kernel=image.path / "vmlinux",
            initrd=image.path / "initrd.cpio",
            rootfs=image.path / "rootfs.ext4",
            disk_size_mb=disk_mb,
            net=net,
        )
        try:
            node = self.client(node_name)
            await node.create(spec)
            await self._settle(node, vm_id)
            save_ms = (await node.snapshot(vm_id, snap_id)).save_ms
            self.store.add_snapshot(
                Snapshot(
                    id=snap_id,
                    vm_id=vm_id,
                    created_at=datetime.now(UTC),
                    cpu=cpu,
                    mem_mb=mem_mb,
                    image_id=image_id,
                    disk_size_mb=disk_mb,
                    kind=SnapshotKind.TEMPLATE,
                    save_ms=save_ms,
                    node=node_name,
                )
            )
            log.info(
                "template %s ready on %s for %s (%d vCPU, %d MiB), saved in %.0f ms",
                *(snap_id, node_name, image_id, cpu, mem_mb, save_ms),
            )
            try:  # its creates are to come: the node's warm spares of it are made now (a node too old: later)
                await node.keep_spares(dataclasses.replace(spec, snapshot_id=snap_id, snapshot_disk_mb=disk_mb))
            except SheeshError as exc:
                log.warning("node %s keeps no spares of template %s yet: %s", node_name, snap_id, exc.message)
        except SheeshError as exc:
            log.warning("template build for %s failed: %s", shape, exc.message)
            with contextlib.suppress(SheeshError):
                await self.client(node_name).delete_snapshot(snap_id)
        finally:
            with contextlib.suppress(SheeshError):
                await self.client(node_name).destroy(vm_id)
