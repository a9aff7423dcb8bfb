"""What uploads and downloads share (standard library only): confinement to the workspace, reached through
folder descriptors that never follow a symlink, and the bounded pipe between a request and its worker thread.

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
from typing import IO

from sheesh.guest.protocol import ErrorKind

CHUNK = 256 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TransferError(Exception):
    """A transfer refused by policy; ``kind`` is ``invalid``, ``not_found`` or ``too_large``."""

    def __init__(self, message: str, kind: str = ErrorKind.INVALID) -> None:
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


def open_dir(name: str, dir_fd: int, shown: str, create: bool = False, chown: tuple[int, int] | None = None) -> int:
    """A descriptor of the folder ``name`` in ``dir_fd``, never through a symlink. With ``create`` a missing
    folder is made first, and given to ``chown`` (folders that existed keep their owner)."""
    made = False
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            made = True
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise TransferError(f"{shown} does not exist", ErrorKind.NOT_FOUND) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TransferError(f"{shown} is not a folder (or was replaced by a link)") from None
        raise
    if made and chown:
        os.fchown(fd, *chown)
    return fd


def open_confined(
    workspace: str, guest_root: str, path: str, create: bool = False, chown: tuple[int, int] | None = None
) -> int:
    """A descriptor of the folder ``path`` (under ``guest_root``), reached from the workspace one component at
    a time without following symlinks (``open_dir``; with ``create`` missing folders are made for ``chown``).
    Symlinks the user made inside the workspace are resolved first (``confine``); one swapped in later fails."""
    target = confine(workspace, guest_root, path)
    real_root = os.path.realpath(workspace)
    rel = os.path.relpath(target, real_root)
    fd = os.open(real_root, DIR_FLAGS)
    try:
        for part in [] if rel == "." else rel.split("/"):
            child = open_dir(part, fd, path, create, chown)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class Pipe:
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
