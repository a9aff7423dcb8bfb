"""tar.gz upload and download confined to the workspace (standard library only).

Uploads are extracted while they stream in, into a staging folder that only root can enter, on the same
filesystem as the workspace but outside it; every member is checked (regular files and folders only: no
symlinks, hardlinks, devices, absolute names or ``..``) and the expanded size is capped, so a decompression
bomb cannot fill the disk. Only when the whole archive is valid are the staged entries moved into the
destination; on any error nothing is written there.
Downloads stream a tar.gz of a folder (symlinks stored as links, never followed) in pulled chunks.

The user owns the workspace and can swap any folder in it for a symlink at any moment (while a transfer is
paused mid-body, say). So nothing in the workspace is ever reached by path: the destination and the source are
opened one component at a time from the workspace's own descriptor with ``O_NOFOLLOW``, and every later
step (mkdir, rename, stat, open, list) is relative to an open folder descriptor. A swapped folder makes the
transfer fail (or, in a download, shows up as the symlink it now is); it never leads outside the workspace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_confined(workspace: str, guest_root: str, path: str, create: bool = False) -> int:
    """A descriptor of the folder ``path`` (under ``guest_root``), reached from the workspace one component at
    a time without following symlinks. With ``create`` missing folders are made (the caller chowns them).
    Symlinks the user made inside the workspace are resolved first (``confine``); one swapped in later fails."""
    target = confine(workspace, guest_root, path)
    real_root = os.path.realpath(workspace)
    rel = os.path.relpath(target, real_root)
    fd = os.open(real_root, _DIR_FLAGS)
    try:
        for part in [] if rel == "." else rel.split("/"):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise TransferError(f"{path} does not exist", "not_found") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise TransferError(f"{path} is not a folder (or was replaced by a link)") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    """One upload: extraction into a private staging folder runs in a thread fed by ``feed``; ``finish``
    validates and moves the staged entries into ``dest`` through folder descriptors."""

    def __init__(self, transfers: Transfers, dest: str, max_bytes: int, chown: tuple[int, int] | None) -> None:
        self.transfers = transfers
        self.dest = dest
        self.max_bytes = max_bytes
        self.chown = chown
        self.staging = os.path.join(transfers.staging_root(), f"upload-{uuid.uuid4().hex}")
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
        t = self.transfers
        dest_fd = open_confined(t.workspace, t.guest_root, self.dest, create=True)
        try:
            self._fix_owner(dest_fd)
            self._check_tree(self.staging, dest_fd, "")
            self._move_tree(self.staging, dest_fd)
        finally:
            os.close(dest_fd)

    def _fix_owner(self, fd: int) -> None:
        if self.chown and os.fstat(fd).st_uid != self.chown[0]:
            os.fchown(fd, *self.chown)

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
                child = None if existing is None else _open_dir(entry.name, dir_fd, name)
                try:
                    self._check_tree(entry.path, child, name)
                finally:
                    if child is not None:
                        os.close(child)

    def _move_tree(self, src: str, dir_fd: int) -> None:
        src_fd = os.open(src, _DIR_FLAGS)
        try:
            for entry in os.scandir(src):
                if entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(entry.name, 0o755, dir_fd=dir_fd)
                    child = _open_dir(entry.name, dir_fd, entry.name)
                    try:
                        self._fix_owner(child)
                        self._move_tree(entry.path, child)
                    finally:
                        os.close(child)
                else:  # rename replaces a final-component link instead of following it
                    os.rename(entry.name, entry.name, src_dir_fd=src_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(src_fd)


def _open_dir(name: str, dir_fd: int | None, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TransferError(f"destination {shown} was replaced by a link or a file") from None
        raise


class _Writer:
    """File-like sink for tarfile: pushes compressed bytes into a pipe."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def write(self, data: bytes) -> int:
        self.pipe.write(data)
        return len(data)


class _Padded:
    """Reads exactly ``size`` bytes from ``fd``: zeros when the file shrank while it was archived."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = os.read(self.fd, n) if n else b""
        if len(data) < n:
            data += bytes(n - len(data))
        self.left -= len(data)
        return data


class Download:
    """One download: a thread writes tar.gz of the folder open at ``source_fd`` (``only``: just that entry of
    it) into a pipe; ``next_chunk`` returns up to CHUNK bytes. The tree is walked through descriptors with
    ``O_NOFOLLOW``: a folder swapped for a symlink while the archive is written is stored as that symlink (or
    left out), never followed."""

    def __init__(self, source_fd: int, only: str | None = None) -> None:
        self.source_fd = source_fd
        self.only = only
        self.pipe = _Pipe()
        self.error: str | None = None
        self.touched = time.monotonic()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            with tarfile.open(fileobj=_Writer(self.pipe), mode="w|gz") as tar:  # type: ignore[call-overload]
                if self.only is None:
                    self._add_dir(tar, self.source_fd, "")
                else:
                    self._add_entry(tar, self.source_fd, self.only, self.only)
        except (OSError, tarfile.TarError) as exc:
            self.error = str(exc)
        finally:
            os.close(self.source_fd)
            self.pipe.close()

    def _add_dir(self, tar: tarfile.TarFile, dir_fd: int, prefix: str) -> None:
        for name in sorted(os.listdir(dir_fd)):
            try:
                self._add_entry(tar, dir_fd, name, prefix + name)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise
                # replaced or removed while we were archiving: leave it out

    def _add_entry(self, tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        info = tarfile.TarInfo(arcname)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        if stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=dir_fd)
            info.mode = 0o777
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                info.type = tarfile.DIRTYPE
                info.mode = stat.S_IMODE(os.fstat(fd).st_mode)
                tar.addfile(info)
                self._add_dir(tar, fd, arcname + "/")
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode):
                    return
                info.mode = stat.S_IMODE(now.st_mode)
                info.size = now.st_size
                tar.addfile(info, _Padded(fd, now.st_size))
            finally:
                os.close(fd)
        # sockets, fifos and devices are left out

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
        staging: str | None = None,
    ) -> None:
        self.workspace = workspace
        self.guest_root = guest_root
        self.chown = chown
        self.staging = staging or os.path.join(
            os.path.dirname(os.path.abspath(workspace)), f".sheesh-staging-{os.path.basename(workspace)}"
        )
        """Root-only folder for uploads being extracted: outside the workspace, on the same filesystem."""
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

    def staging_root(self) -> str:
        os.makedirs(self.staging, mode=0o700, exist_ok=True)
        return self.staging

    def begin_upload(self, dest: str, max_bytes: int) -> str:
        confine(self.workspace, self.guest_root, dest)  # refuse early; checked again, race-free, at the end
        # keep a reserve so an upload never fills the disk completely
        budget = min(max_bytes, max(0, self._free(self.workspace) - 64 * 1024 * 1024))
        upload = Upload(self, dest, budget, self.chown)
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
        only = None
        if not os.path.isdir(source):  # one file: archived from its folder, by name
            path, only = os.path.dirname(os.path.normpath(path)), os.path.basename(source)
        fd = open_confined(self.workspace, self.guest_root, path)
        key = uuid.uuid4().hex
        with self._lock:
            self.downloads[key] = Download(fd, only)
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
