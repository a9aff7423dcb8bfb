"""Kernel handling: uncompressed vmlinux out of a bzImage, module dependency order."""

from __future__ import annotations

import lzma
import zlib
from pathlib import Path

from sheesh.image.errors import ImageBuildError

_ELF = b"\x7fELF"


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the ELF vmlinux compressed inside ``bzimage`` (xz, gzip or zstd payloads)."""
    for magic, opener in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")):
        start = bzimage.find(magic)
        while start >= 0:
            data = _try_decompress(opener, bzimage[start:])
            if data is not None and data.startswith(_ELF):
                return data
            start = bzimage.find(magic, start + 1)
    raise ImageBuildError("no ELF vmlinux found inside the kernel image")


def _try_decompress(kind: str, data: bytes) -> bytes | None:
    try:
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        import subprocess

        proc = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
        return proc.stdout or None
    except (lzma.LZMAError, zlib.error, OSError):
        return None


def module_load_order(modules_dep: Path, wanted: list[str]) -> list[str]:
    """Relative .ko paths for ``wanted`` module names and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.read_text().splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...] = ()) -> None:
        if path in order or path in stack:
            return
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise ImageBuildError(f"kernel module {name} not found")
        visit(by_name[key])
    return order
