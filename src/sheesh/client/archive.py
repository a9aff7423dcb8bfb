"""tar.gz archives for file transfers: what ``vm.files.upload`` sends and ``download`` unpacks."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import IO


def pack(local: str | os.PathLike[str]) -> bytes:
    """A tar.gz of ``local``: a folder's contents (the folder itself is the archive's root), or one file under
    its own name. Symbolic links are not followed (the server refuses links anyway)."""
    path = Path(local)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def unpack(archive: IO[bytes], dest: str | os.PathLike[str]) -> list[str]:
    """Extract a tar.gz into ``dest`` (made if missing) with tarfile's ``data`` filter: nothing lands outside
    ``dest``, no devices, no absolute links. Returns the names extracted."""
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(target, filter="data")
    return names
