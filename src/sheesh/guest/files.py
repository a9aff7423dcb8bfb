"""tar.gz transfers confined to the workspace (standard library only): open uploads (``upload.py``) and
downloads (``download.py``) by id; idle ones are aborted by a janitor thread."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sheesh.guest.confined import TransferError, confine, open_confined
from sheesh.guest.download import Download
from sheesh.guest.protocol import ErrorKind
from sheesh.guest.upload import Upload

__all__ = ["TransferError", "Transfers"]
IDLE_TIMEOUT_S = 120.0


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
        upload = Upload(
            staging_root=self.staging_root(),
            workspace=self.workspace,
            guest_root=self.guest_root,
            dest=dest,
            max_bytes=budget,
            chown=self.chown,
        )
        key = uuid.uuid4().hex
        with self._lock:
            self.uploads[key] = upload
        return key

    def _upload(self, key: str) -> Upload:
        with self._lock:
            upload = self.uploads.get(key)
        if upload is None:
            raise TransferError("unknown upload", ErrorKind.NOT_FOUND)
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
            raise TransferError(f"{path} does not exist", ErrorKind.NOT_FOUND)
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
            raise TransferError("unknown download", ErrorKind.NOT_FOUND)
        data = download.next_chunk()
        if not data:
            self.close_download(key)
            if download.error:
                raise TransferError(f"archive failed: {download.error}", ErrorKind.INTERNAL)
            return b"", True
        return data, False

    def close_download(self, key: str) -> None:
        with self._lock:
            download = self.downloads.pop(key, None)
        if download is not None:
            download.close()
