"""Checks for uploaded image parts: an x86-64 ELF kernel with a PVH entry point, an ext4 file system."""

from __future__ import annotations

import struct
from pathlib import Path

from sheesh.image.errors import InvalidImageError

_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18
_EM_X86_64 = 62
_EXT4_MAGIC = 0xEF53


def check_kernel(path: Path) -> None:
    """An uncompressed ELF64 x86-64 ``vmlinux`` carrying the PVH entry note (booted directly by QEMU)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF":
            raise InvalidImageError("kernel is not an ELF file (upload the uncompressed vmlinux)")
        if head[4] != 2 or head[5] != 1:
            raise InvalidImageError("kernel must be a 64-bit little-endian ELF")
        (machine,) = struct.unpack_from("<H", head, 18)
        if machine != _EM_X86_64:
            raise InvalidImageError("kernel is not built for x86-64")
        phoff, phentsize, phnum = struct.unpack_from("<Q", head, 32)[0], *struct.unpack_from("<HH", head, 54)
        for i in range(min(phnum, 256)):
            fh.seek(phoff + i * phentsize)
            ptype, _flags, offset, _v, _p, filesz = struct.unpack("<IIQQQQ", fh.read(40))
            if ptype != _PT_NOTE or filesz > 1 << 20:
                continue
            fh.seek(offset)
            if _has_pvh_note(fh.read(filesz)):
                return
    raise InvalidImageError("kernel has no PVH entry note (CONFIG_PVH); QEMU cannot boot it directly")


def _has_pvh_note(notes: bytes) -> bool:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
        if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def check_rootfs(path: Path, min_mb: int = 64) -> int:
    """An ext2/3/4 file system image of at least ``min_mb`` MiB; returns its size in MiB (rounded down)."""
    size = path.stat().st_size
    if size < min_mb * 1024 * 1024:
        raise InvalidImageError(f"rootfs must be at least {min_mb} MiB")
    with open(path, "rb") as fh:
        fh.seek(1024 + 56)
        (magic,) = struct.unpack("<H", fh.read(2))
    if magic != _EXT4_MAGIC:
        raise InvalidImageError("rootfs is not an ext4 file system image")
    return size // (1024 * 1024)
