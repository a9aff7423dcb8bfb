"""Writing files only their owner may read (keys, CA secrets, saved logins); standard library only."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` with mode 0600 (also when the file existed with a wider mode); its folder is
    made (0700) if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data.encode() if isinstance(data, str) else data)
