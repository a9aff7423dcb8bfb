"""Composition root: wires settings, store, node agent and VMM driver into ``Services``."""

from __future__ import annotations

from sheesh.config import Settings
from sheesh.control.images import register_builtin
from sheesh.control.services import Services
from sheesh.image.builder import ImageBuilder
from sheesh.node.agent import NodeAgent
from sheesh.store.repo import SqlStore
from sheesh.vmm.driver import VmmDriver
from sheesh.vmm.fake import FakeDriver
from sheesh.vmm.qemu import QemuDriver


def build_services(settings: Settings, driver: VmmDriver | None = None) -> Services:
    """Production wiring: SQL store, embedded local node on QEMU, built-in image registered if built."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.resolved_database_url())
    drv = driver or (FakeDriver() if settings.vmm == "fake" else QemuDriver(settings.data_dir, accel=settings.accel))
    node = NodeAgent(
        settings.vms_dir,
        drv,
        boot_timeout_s=settings.boot_timeout_s,
        stop_timeout_s=settings.stop_timeout_s,
        name=settings.node_name,
        snapshots_dir=settings.data_dir / "snapshots",
    )
    built = ImageBuilder(settings.resolved_image_dir()).cached()
    if built is not None:
        register_builtin(store, built)
    return Services.create(settings, store, node)
