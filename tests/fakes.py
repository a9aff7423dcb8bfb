"""Helpers building a control plane on fakes (memory store + fake node client)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sheesh.config import Settings
from sheesh.control.node_client import FakeNodeClient
from sheesh.control.services import Services
from sheesh.models import Image
from sheesh.store.repo import MemoryStore, Store


def add_default_image(store: Store, path: Path, rootfs_mb: int = 512) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinux", "initrd.cpio", "rootfs.ext4"):
        (path / name).write_bytes(b"fake " + name.encode())
    image = Image("img-test", "debian-bookworm", "test image", rootfs_mb, False, datetime.now(UTC))
    store.add_image(image, path)
    store.set_default_image(image.id)
    return image.id


def fake_services(settings: Settings) -> tuple[Services, FakeNodeClient]:
    store = MemoryStore()
    add_default_image(store, settings.data_dir / "img")
    node = FakeNodeClient()
    return Services.create(settings, store, node), node
