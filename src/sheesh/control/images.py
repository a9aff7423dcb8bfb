"""Image registry: registers the built-in image and resolves image ids to files."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sheesh.config import Settings
from sheesh.errors import ConflictError, NotFoundError, PayloadTooLargeError, UnavailableError
from sheesh.image.built import BuiltImage
from sheesh.image.validate import check_kernel, check_rootfs
from sheesh.models import Image
from sheesh.store.repo import Store
from sheesh.store.rows import StoredImage


def builtin_image_id(built: BuiltImage) -> str:
    return f"img-{built.recipe_hash[:12]}"


def register_builtin(store: Store, built: BuiltImage) -> Image:
    """Record the built-in image; it becomes the default when there is none or the old one was built-in."""
    image_id = builtin_image_id(built)
    current = store.get_image(image_id)
    if current is None:
        image = Image(
            image_id,
            "debian-bookworm",
            f"Debian bookworm, kernel {built.kernel_version}, python3, guest agent (built-in)",
            built.rootfs_size_mb,
            False,
            datetime.now(UTC),
        )
        store.add_image(image, built.path)
    defaults = [s for s in store.list_images() if s.image.is_default]
    if not defaults or defaults[0].image.name == "debian-bookworm":
        store.set_default_image(image_id)
    stored = store.get_image(image_id)
    assert stored is not None
    return stored.image


def resolve_image(store: Store, image_id: str | None) -> StoredImage:
    """The image to boot: ``image_id`` or the default. NotFoundError if unknown."""
    if image_id is not None:
        stored = store.get_image(image_id)
        if stored is None:
            raise NotFoundError(f"image {image_id} not found")
        if stored.image.rootfs_size_mb <= 0:
            raise ConflictError(f"image {image_id} has no rootfs yet")
        return stored
    for stored in store.list_images():
        if stored.image.is_default:
            return stored
    raise UnavailableError("no default image is registered (run `sheesh image build`)")


KERNEL_FILE = "vmlinux"
INITRD_FILE = "initrd.cpio"
ROOTFS_FILE = "rootfs.ext4"


def image_ready(path: Path) -> bool:
    return all((path / f).is_file() for f in (KERNEL_FILE, INITRD_FILE, ROOTFS_FILE))


@dataclass
class ImageService:
    """Custom images: metadata, streamed kernel/rootfs uploads (validated, size-limited, swapped in only
    when valid), default selection, deletion. Parts of an image in use by VMs or snapshots are immutable."""

    store: Store
    settings: Settings

    def get(self, image_id: str) -> StoredImage:
        stored = self.store.get_image(image_id)
        if stored is None:
            raise NotFoundError(f"image {image_id} not found")
        return stored

    def list_images(self) -> list[StoredImage]:
        return self.store.list_images()

    def create(self, name: str, description: str) -> StoredImage:
        """A new, empty image; it gets the built-in initramfs (virtio/ext4 modules for the Debian kernel)."""
        image_id = f"img-{secrets.token_hex(6)}"
        path = self.settings.resolved_image_dir() / "custom" / image_id
        path.mkdir(parents=True)
        default = next((s for s in self.store.list_images() if s.image.is_default), None)
        if default is not None and (default.path / INITRD_FILE).is_file():
            shutil.copyfile(default.path / INITRD_FILE, path / INITRD_FILE)
        self.store.add_image(Image(image_id, name, description, 0, False, datetime.now(UTC)), path)
        return self.get(image_id)

    def _users(self, image_id: str) -> list[str]:
        vms = [v.id for v in self.store.list_vms() if v.image_id == image_id]
        snaps = [s.id for s in self.store.list_snapshots() if s.image_id == image_id]
        return vms + snaps

    async def upload(self, image_id: str, part: str, chunks: AsyncIterator[bytes]) -> StoredImage:
        """Store ``part`` (``kernel`` or ``rootfs``) from a byte stream; 413 past the limit, 400 if invalid."""
        stored = self.get(image_id)
        if users := self._users(image_id):
            raise ConflictError(f"image {image_id} is in use by {', '.join(users)}")
        limit = self.settings.image_kernel_max_bytes if part == "kernel" else self.settings.image_rootfs_max_bytes
        target = stored.path / (KERNEL_FILE if part == "kernel" else ROOTFS_FILE)
        tmp = target.with_suffix(".upload")
        total = 0
        try:
            with open(tmp, "wb") as fh:
                async for chunk in chunks:
                    total += len(chunk)
                    if total > limit:
                        raise PayloadTooLargeError(f"{part} exceeds {limit} bytes")
                    await asyncio.to_thread(fh.write, chunk)
            if part == "kernel":
                await asyncio.to_thread(check_kernel, tmp)
            else:
                size_mb = await asyncio.to_thread(check_rootfs, tmp)
                tmp.chmod(0o444)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        if part == "rootfs":
            self.store.update_image_size(image_id, size_mb)
        return self.get(image_id)

    def set_default(self, image_id: str) -> None:
        stored = self.get(image_id)
        if not image_ready(stored.path):
            raise ConflictError(f"image {image_id} needs a kernel and a rootfs before it can be the default")
        self.store.set_default_image(image_id)

    def delete(self, image_id: str) -> None:
        stored = self.get(image_id)
        if stored.image.is_default:
            raise ConflictError(f"image {image_id} is the default image; set another default first")
        if users := self._users(image_id):
            raise ConflictError(f"image {image_id} is in use by {', '.join(users)}")
        self.store.delete_image(image_id)
        if stored.path.parent == self.settings.resolved_image_dir() / "custom":
            shutil.rmtree(stored.path, ignore_errors=True)
