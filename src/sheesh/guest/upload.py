"""tar.gz uploads into the workspace (standard library only).

Uploads are extracted while they stream in, into a staging folder that only root can enter, on the same
filesystem as the workspace but outside it; every member is checked (regular files and folders only: no
symlinks, hardlinks, devices, absolute names or ``..``) and the expanded size is capped, so a decompression
bomb cannot fill the disk. Only when the whole archive is valid are the staged entries moved into the
destination, through folder descriptors (``confined.py``); on any error nothing is written there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import threading
import time
import uuid
from typing import Any

from sheesh.guest.confined import CHUNK, DIR_FLAGS, Pipe, TransferError, open_confined, open_dir
from sheesh.guest.protocol import ErrorKind

MAX_ENTRIES = 100_000


def _check_member(member: tarfile.TarInfo) -> str:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise TransferError(f"absolute path in archive: {name}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TransferError(f"path traversal in archive: {name}")
    if member.issym() or member.islnk():
        raise TransferError(f"links are not allowed in uploads: {name}")
    if not (member.isfile() or member.isdir()):
        raise TransferError(f"only regular files and folders are allowed: {name}")
    return "/".join(parts)


class Upload:
    """One upload: extraction into a private staging folder runs in a thread fed by ``feed``; ``finish``
    validates and moves the staged entries into ``dest`` through folder descriptors."""

    def __init__(
        self,
        *,
        staging_root: str,
        workspace: str,
        guest_root: str,
        dest: str,
        max_bytes: int,
        chown: tuple[int, int] | None,
    ) -> None:
        self.workspace = workspace
        self.guest_root = guest_root
        self.dest = dest
        self.max_bytes = max_bytes
        self.chown = chown
        self.staging = os.path.join(staging_root, f"upload-{uuid.uuid4().hex}")
        os.mkdir(self.staging, 0o700)
        self.pipe = Pipe()
        self.error: TransferError | None = None
        self.files = 0
        self.bytes = 0
        self.touched = time.monotonic()
        self._thread = threading.Thread(target=self._extract, daemon=True)
        self._thread.start()

    def _extract(self) -> None:
        try:
            with tarfile.open(fileobj=self.pipe.reader, mode="r|gz") as tar:
                self._extract_all(tar)
        except TransferError as exc:
            self.error = exc
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            self.error = TransferError(f"not a valid tar.gz archive: {exc}")
        finally:
            # drain so the writer never blocks on a full pipe after an early error
            with contextlib.suppress(OSError, ValueError):
                while self.pipe.reader.read(CHUNK):
                    pass
            self.pipe.reader.close()

    def _extract_all(self, tar: tarfile.TarFile) -> None:
        for count, member in enumerate(tar, 1):
            if count > MAX_ENTRIES:
                raise TransferError(f"archive has more than {MAX_ENTRIES} entries", ErrorKind.TOO_LARGE)
            rel = _check_member(member)
            if not rel:
                continue
            target = os.path.join(self.staging, rel)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                while block := src.read(CHUNK):
                    self.bytes += len(block)
                    if self.bytes > self.max_bytes:
                        raise TransferError(f"archive expands beyond {self.max_bytes} bytes", ErrorKind.TOO_LARGE)
                    out.write(block)
                os.fchmod(out.fileno(), (member.mode & 0o777) | 0o600)
                if self.chown:
                    os.fchown(out.fileno(), *self.chown)
            self.files += 1

    def feed(self, data: bytes) -> None:
        self.touched = time.monotonic()
        if self.error is None:
            with contextlib.suppress(OSError):
                self.pipe.write(data)

    def finish(self) -> dict[str, Any]:
        self.pipe.close()
        self._thread.join()
        try:
            if self.error is not None:
                raise self.error
            self._move()
            return {"files": self.files, "bytes": self.bytes}
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        self.error = self.error or TransferError("upload aborted")
        self.pipe.close()
        self._thread.join(timeout=5)
        shutil.rmtree(self.staging, ignore_errors=True)

    def _move(self) -> None:
        """Check every target first (no file over a folder or a link), then move entries into ``dest``;
        every step below the workspace goes through folder descriptors (never a path the user can change)."""
        dest_fd = open_confined(self.workspace, self.guest_root, self.dest, create=True, chown=self.chown)
        try:
            self._check_tree(self.staging, dest_fd, "")
            self._move_tree(self.staging, dest_fd)
        finally:
            os.close(dest_fd)

    def _check_tree(self, src: str, dir_fd: int | None, rel: str) -> None:
        """Refuse when a staged entry would land on a link or on an entry of the other kind."""
        for entry in os.scandir(src):
            name = os.path.join(rel, entry.name)
            existing = None
            if dir_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    existing = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                raise TransferError(f"destination {name} is a symlink")
            is_dir = entry.is_dir(follow_symlinks=False)
            if existing is not None and stat.S_ISDIR(existing.st_mode) != is_dir:
                raise TransferError(f"destination {name} exists and is not a {'folder' if is_dir else 'file'}")
            if is_dir:
                child = None
                if existing is not None and dir_fd is not None:  # (existing is only set with a dir_fd)
                    child = open_dir(entry.name, dir_fd, f"destination {name}")
                try:
                    self._check_tree(entry.path, child, name)
                finally:
                    if child is not None:
                        os.close(child)

    def _move_tree(self, src: str, dir_fd: int) -> None:
        src_fd = os.open(src, DIR_FLAGS)
        try:
            for entry in os.scandir(src):
                if entry.is_dir(follow_symlinks=False):
                    child = open_dir(entry.name, dir_fd, f"destination {entry.name}", True, self.chown)
                    try:
                        self._move_tree(entry.path, child)
                    finally:
                        os.close(child)
                else:  # rename replaces a final-component link instead of following it
                    os.rename(entry.name, entry.name, src_dir_fd=src_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(src_fd)
