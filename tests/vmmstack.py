"""The whole stack in-process on the fake VMM: its services, and cleanup of the guest agent processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sheesh.config import Settings
from sheesh.control.services import Services
from sheesh.node.agent import NodeAgent
from sheesh.store.repo import SqlStore
from sheesh.vmm.fake import FakeDriver
from tests.fakes import add_default_image

KEY = {"X-API-Key": "test-key"}
GOOD = {"cpu": 1, "memMb": 128, "allowIps": ["172.16.0.1/32"]}


def vmm_services(settings: Settings, driver: FakeDriver) -> Services:
    store = SqlStore(settings.resolved_database_url())
    if not store.list_images():
        add_default_image(store, settings.data_dir / "img")
    node = NodeAgent(settings.vms_dir, driver, boot_timeout_s=10, stop_timeout_s=3)
    return Services.create(settings, store, node)


def kill_leftovers(vms_dir: Path) -> None:
    for pidfile in vms_dir.glob("*/vmm.pid"):
        proc = Path(f"/proc/{pidfile.read_text().strip()}/cmdline")
        if proc.exists() and str(pidfile.parent).encode() in proc.read_bytes():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
