"""Files for the UI's upload and listing: plain uploaded files packed into the tar.gz the guest takes, and the
entries of the tar.gz stream a download gives."""

from __future__ import annotations

import asyncio
import contextlib
import io
import posixpath
import queue
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from starlette.datastructures import UploadFile

from sheesh.errors import InvalidInputError


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    dir: bool
    mtime: datetime


@contextlib.contextmanager
def pack_files(files: Sequence[UploadFile]) -> Iterator[IO[bytes]]:
    """A tar.gz (spooled to disk past 8 MiB) of ``files`` under their base names, mode 0644."""
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as out:
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            seen = set()
            for f in files:
                name = posixpath.basename((f.filename or "").replace("\\", "/"))
                if name in ("", ".", "..") or name in seen:
                    raise InvalidInputError(f"bad or repeated file name {f.filename!r}")
                seen.add(name)
                info = tarfile.TarInfo(name)
                f.file.seek(0, io.SEEK_END)
                info.size = f.file.tell()
                f.file.seek(0)
                info.mode = 0o644
                info.mtime = int(time.time())
                tar.addfile(info, f.file)
        out.seek(0)
        yield out


class _Pipe(io.RawIOBase):
    """A blocking, readable file over chunks the event loop puts in a queue (None: the end)."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.pending = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.pending and not self.done:
            chunk = self.chunks.get()
            self.done = chunk is None
            self.pending = chunk or b""
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def _entries(pipe: _Pipe, limit: int) -> tuple[list[Entry], bool]:
    entries: list[Entry] = []
    with tarfile.open(fileobj=io.BufferedReader(pipe), mode="r|gz") as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            if path in ("", "."):
                continue
            if len(entries) == limit:
                return entries, True
            mtime = datetime.fromtimestamp(member.mtime, UTC)
            entries.append(Entry(path=path, size=member.size, dir=member.isdir(), mtime=mtime))
    return entries, False


async def list_archive(stream: AsyncIterator[bytes], limit: int) -> tuple[list[Entry], bool]:
    """The first ``limit`` entries of a tar.gz ``stream`` (paths relative to its root), and whether there are
    more; read as it arrives, in a worker thread (file contents are skipped, not kept)."""
    pipe = _Pipe()
    reader = asyncio.create_task(asyncio.to_thread(_entries, pipe, limit))

    async def put(item: bytes | None) -> None:
        """Hand ``item`` to the reader, waiting while its queue is full; dropped once the reader is done."""
        while not reader.done():
            try:
                pipe.chunks.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(0.005)

    try:
        async for chunk in stream:
            if reader.done():
                break
            await put(chunk)
    finally:
        await put(None)
    try:
        return await reader
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInputError(f"the listing could not be read: {exc}") from None
