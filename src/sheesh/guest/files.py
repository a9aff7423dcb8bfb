"""tar.gz upload and download confined to the workspace (standard library only).

Uploads are extracted while they stream in, into a staging folder inside the workspace; every member is
checked (regular files and folders only: no symlinks, hardlinks, devices, absolute names or ``..``) and the
expanded size is capped, so a decompression bomb cannot fill the disk. Only when the whole archive is valid
are the staged entries moved into the destination; on any error nothing is written there.
Downloads stream a tar.gz of a folder (symlinks stored as links, never followed) in pulled chunks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import IO, Any

CHUNK = 256 * 1024
MAX_ENTRIES = 100_000
IDLE_TIMEOUT_S = 120.0


class TransferError(Exception):
    """A transfer refused by policy; ``kind`` is ``invalid``, ``not_found`` or ``too_large``."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


def confine(workspace: str, guest_root: str, path: str) -> str:
    """Map a guest path under ``guest_root`` (/workspace) to a real path under ``workspace``; the
    result (after resolving symlinks) must stay inside it."""
    norm = os.path.normpath(path)
    if not path.startswith("/") or not (norm == guest_root or norm.startswith(guest_root + "/")):
        raise TransferError(f"path must be {guest_root} or below it")
    real_root = os.path.realpath(workspace)
    target = os.path.realpath(workspace + norm[len(guest_root) :])
    if target != real_root and not target.startswith(real_root + "/"):
        raise TransferError(f"path escapes {guest_root} through a symlink")
    return target


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


class _Pipe:
    """A bounded byte pipe between the request thread (writer) and the extraction thread (reader)."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self.reader: IO[bytes] = os.fdopen(self._r, "rb")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._w, view) :]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._w)


class Upload:
    """One upload: extraction runs in a thread fed by ``feed``; ``finish`` validates and moves."""

    def __init__(self, workspace: str, dest: str, max_bytes: int, chown: tuple[int, int] | None) -> None:
        self.workspace = workspace
        self.dest = dest
        self.max_bytes = max_bytes
        self.chown = chown
        self.staging = os.path.join(workspace, f".sheesh-upload-{uuid.uuid4().hex}")
        os.mkdir(self.staging, 0o700)
        self.pipe = _Pipe()
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
                raise TransferError(f"archive has more than {MAX_ENTRIES} entries", "too_large")
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
                        raise TransferError(f"archive expands beyond {self.max_bytes} bytes", "too_large")
                    out.write(block)
            os.chmod(target, (member.mode & 0o777) | 0o600)
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
        """Check every target first (no file over a folder or a link), then move entries into ``dest``."""
        plan: list[tuple[str, str, bool]] = []
        for root, dirs, files in os.walk(self.staging):
            rel_root = os.path.relpath(root, self.staging)
            for name in dirs + files:
                rel = os.path.normpath(os.path.join(rel_root, name))
                target = os.path.join(self.dest, rel)
                is_dir = name in dirs
                if os.path.islink(target):
                    raise TransferError(f"destination {rel} is a symlink")
                if os.path.exists(target) and os.path.isdir(target) != is_dir:
                    raise TransferError(f"destination {rel} exists and is not a {'folder' if is_dir else 'file'}")
                plan.append((os.path.join(root, name), target, is_dir))
        self._makedirs(self.dest)
        for src, target, is_dir in plan:
            if is_dir:
                self._makedirs(target)
            else:
                os.replace(src, target)
                if self.chown:
                    os.chown(target, *self.chown, follow_symlinks=False)

    def _makedirs(self, path: str) -> None:
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for p in reversed(missing):
            os.mkdir(p, 0o755)
            if self.chown:
                os.chown(p, *self.chown, follow_symlinks=False)


class _Writer:
    """File-like sink for tarfile: pushes compressed bytes into a pipe."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def write(self, data: bytes) -> int:
        self.pipe.write(data)
        return len(data)


class Download:
    """One download: a thread writes tar.gz into a pipe; ``next_chunk`` returns up to CHUNK bytes."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pipe = _Pipe()
        self.error: str | None = None
        self.touched = time.monotonic()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            with tarfile.open(fileobj=_Writer(self.pipe), mode="w|gz") as tar:  # type: ignore[call-overload]
                if os.path.isdir(self.source):
                    for name in sorted(os.listdir(self.source)):
                        tar.add(os.path.join(self.source, name), arcname=name)
                else:
                    tar.add(self.source, arcname=os.path.basename(self.source))
        except (OSError, tarfile.TarError) as exc:
            self.error = str(exc)
        finally:
            self.pipe.close()

    def next_chunk(self) -> bytes:
        self.touched = time.monotonic()
        return self.pipe.reader.read1(CHUNK) if hasattr(self.pipe.reader, "read1") else self.pipe.reader.read(CHUNK)

    def close(self) -> None:
        self.pipe.reader.close()
        self._thread.join(timeout=5)


class Transfers:
    """Open uploads/downloads by id; idle ones are aborted by a janitor thread."""

    def __init__(
        self,
        workspace: str,
        guest_root: str,
        chown: tuple[int, int] | None,
        free_bytes: Callable[[str], int] | None = None,
    ) -> None:
        self.workspace = workspace
        self.guest_root = guest_root
        self.chown = chown
        self._free = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self.uploads: dict[str, Upload] = {}
        self.downloads: dict[str, Download] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._janitor, daemon=True).start()

    def _janitor(self) -> None:
        while True:
            time.sleep(10)
            now = time.monotonic()
            with self._lock:
                stale_up = [k for k, u in self.uploads.items() if now - u.touched > IDLE_TIMEOUT_S]
                stale_down = [k for k, d in self.downloads.items() if now - d.touched > IDLE_TIMEOUT_S]
                ups = [self.uploads.pop(k) for k in stale_up]
                downs = [self.downloads.pop(k) for k in stale_down]
            for u in ups:
                u.abort()
            for d in downs:
                d.close()

    def begin_upload(self, dest: str, max_bytes: int) -> str:
        target = confine(self.workspace, self.guest_root, dest)
        # keep a reserve so an upload never fills the disk completely
        budget = min(max_bytes, max(0, self._free(self.workspace) - 64 * 1024 * 1024))
        upload = Upload(self.workspace, target, budget, self.chown)
        key = uuid.uuid4().hex
        with self._lock:
            self.uploads[key] = upload
        return key

    def _upload(self, key: str) -> Upload:
        with self._lock:
            upload = self.uploads.get(key)
        if upload is None:
            raise TransferError("unknown upload", "not_found")
        return upload

    def feed(self, key: str, data: bytes) -> None:
        self._upload(key).feed(data)

    def end_upload(self, key: str) -> dict[str, Any]:
        upload = self._upload(key)
        with self._lock:
            self.uploads.pop(key, None)
        return upload.finish()

    def abort_upload(self, key: str) -> None:
        with self._lock:
            upload = self.uploads.pop(key, None)
        if upload is not None:
            upload.abort()

    def begin_download(self, path: str) -> str:
        source = confine(self.workspace, self.guest_root, path)
        if not os.path.exists(source):
            raise TransferError(f"{path} does not exist", "not_found")
        key = uuid.uuid4().hex
        with self._lock:
            self.downloads[key] = Download(source)
        return key

    def next_chunk(self, key: str) -> tuple[bytes, bool]:
        with self._lock:
            download = self.downloads.get(key)
        if download is None:
            raise TransferError("unknown download", "not_found")
        data = download.next_chunk()
        if not data:
            self.close_download(key)
            if download.error:
                raise TransferError(f"archive failed: {download.error}", "internal")
            return b"", True
        return data, False

    def close_download(self, key: str) -> None:
        with self._lock:
            download = self.downloads.pop(key, None)
        if download is not None:
            download.close()
