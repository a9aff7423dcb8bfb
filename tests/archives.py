"""Builders of tar.gz archives (good and hostile) for upload tests."""

from __future__ import annotations

import io
import tarfile


def targz(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """entries: (kind, name, data) with kind file|dir|symlink|hardlink|fifo|absolute."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            payload = b""
            if kind == "file":
                payload = data if isinstance(data, bytes) else data.encode()
                info.size = len(payload)
                info.mode = 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = str(data)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = str(data)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(payload) if payload else None)
    return buf.getvalue()


def bomb(expanded_bytes: int) -> bytes:
    """A small archive holding one file of zeros that expands to ``expanded_bytes``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = expanded_bytes

        class Zeros(io.RawIOBase):
            def __init__(self) -> None:
                self.left = expanded_bytes

            def readable(self) -> bool:
                return True

            def readinto(self, b: memoryview) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros()))
    return buf.getvalue()


def members(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out: dict[str, bytes | None] = {}
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name] = f.read() if f else None
        return out
