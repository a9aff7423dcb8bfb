"""Checking out a CI project's repository on the control plane's host (``git`` as a subprocess), to copy it
into the job's VM. Only ``http``, ``https`` and ``git`` URLs to addresses outside the blocked networks, and
``file`` URLs under the folders an admin allows (``ci_local_repo_roots``), are cloned."""

from __future__ import annotations

import asyncio
import io
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from sheesh.errors import InvalidInputError, SheeshError
from sheesh.outbound import Network, checked_addresses

REMOTE_SCHEMES = {"http": 80, "https": 443, "git": 9418}
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


class GitError(SheeshError):
    """Cloning or checking out failed (the message has git's own words)."""


def check_repo_url(url: str, local_roots: Sequence[Path]) -> str:
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(parts.path).resolve()
        if not any(path.is_relative_to(root.resolve()) for root in local_roots):
            raise InvalidInputError(
                "file:// repositories must be under a folder the admin allows (ci_local_repo_roots)"
            )
        return url
    if parts.scheme not in REMOTE_SCHEMES or not parts.hostname:
        raise InvalidInputError("repo_url must be an http://, https:// or git:// URL of a git repository")
    return url


def check_ref(ref: str | None, what: str) -> str | None:
    if ref is not None and (not _REF.match(ref) or ".." in ref):
        raise InvalidInputError(f"{what} must be a branch name or commit id")
    return ref


async def _git(*args: str, cwd: Path | None = None, timeout_s: float = 300) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd or "/nonexistent"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ALLOW_PROTOCOL": "http:https:git:file",
    }
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitError(f"git {args[0]} took longer than {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise GitError(f"git {args[0]} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode(errors="replace").strip()


async def checkout(url: str, dest: Path, *, branch: str | None, commit: str | None, blocked: Sequence[Network]) -> str:
    """Clone ``url`` into ``dest`` at ``commit``, else the tip of ``branch``, else the default branch; the
    commit id checked out."""
    parts = urlsplit(url)
    if parts.scheme in REMOTE_SCHEMES:
        await checked_addresses(parts.hostname or "", parts.port or REMOTE_SCHEMES[parts.scheme], blocked)
    await _git("clone", "--quiet", "--no-checkout", "--", url, str(dest), cwd=dest.parent)
    target = commit or (f"origin/{branch}" if branch else "HEAD")
    await _git("-c", "advice.detachedHead=false", "checkout", "--quiet", target, "--", cwd=dest)
    return await _git("rev-parse", "HEAD", cwd=dest)


def archive(folder: Path, max_bytes: int) -> bytes:
    """``folder`` (with its .git) as tar.gz; InvalidInputError when larger than ``max_bytes``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    if buf.tell() > max_bytes:
        raise InvalidInputError(f"the repository is larger than {max_bytes} bytes compressed")
    return buf.getvalue()
