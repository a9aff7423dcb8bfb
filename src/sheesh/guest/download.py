"""tar.gz downloads of workspace folders (standard library only): the tree is walked through folder
descriptors with ``O_NOFOLLOW`` (``confined.py``), links are stored as links, never followed."""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import threading
import time

from sheesh.guest.confined import CHUNK, DIR_FLAGS, Pipe


class _Writer:
    """File-like sink for tarfile: pushes compressed bytes into a pipe."""

    def __init__(self, pipe: Pipe) -> None:
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
        self.pipe = Pipe()
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
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
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
