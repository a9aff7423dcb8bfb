"""A finished guest image on disk (what the control plane registers; no build machinery here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sheesh.image.errors import ImageBuildError


@dataclass(frozen=True)
class BuiltImage:
    """A finished image on disk."""

    path: Path
    recipe_hash: str
    kernel_version: str
    rootfs_size_mb: int

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.cpio"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.ext4"

    @classmethod
    def load(cls, path: Path) -> BuiltImage:
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            return cls(path, manifest["recipe_hash"], manifest["kernel_version"], manifest["rootfs_size_mb"])
        except (OSError, ValueError, KeyError) as exc:
            raise ImageBuildError(f"no usable image at {path}") from exc
