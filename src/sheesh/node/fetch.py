"""Downloads of user-supplied URLs (ISOs, cloud images) to a node file, with a size cap and progress.

The node refuses addresses in its blocked networks (``sheesh.outbound``: loopback, link-local with the clouds'
metadata services, the guest network...). Redirects are followed by hand (at most 5), each one checked the
same way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urljoin

import httpx

from sheesh import outbound
from sheesh.node.errors import MediaError
from sheesh.outbound import Network, OutboundError, pinned_requests, send_first

__all__ = ["FetchError", "Network", "check_url", "fetch", "room_for"]

FREE_SPACE_MARGIN = 256 * 1024 * 1024
"""Space a download must leave free on the node's disk."""
MAX_REDIRECTS = 5


def room_for(directory: Path, size: int) -> bool:
    """Whether ``size`` more bytes fit in ``directory``'s file system with ``FREE_SPACE_MARGIN`` to spare."""
    return size + FREE_SPACE_MARGIN <= shutil.disk_usage(directory).free


class FetchError(MediaError):
    """A download failed; the message is safe to show to the user."""


def check_url(url: str | None) -> str:
    """``url`` if it is an absolute http(s) URL, else FetchError."""
    try:
        return outbound.check_url(url)
    except OutboundError as exc:
        raise FetchError(exc.message) from None


async def fetch(
    url: str,
    dest: Path,
    max_bytes: int,
    progress: Callable[[int], Awaitable[None]],
    *,
    timeout_s: float = 60.0,
    blocked: Sequence[Network] = (),
) -> int:
    """Download ``url`` into ``dest`` (written as ``dest.part`` and renamed when complete); returns its size.
    ``progress(percent)`` is awaited each time the percentage grows, when the server sends a length.
    More than ``max_bytes``, an HTTP error, an address in ``blocked`` (also after a redirect) or too little
    disk space raise FetchError and leave no file."""
    check_url(url)
    part = dest.with_name(dest.name + ".part")
    try:
        async with httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(timeout_s)) as client:
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    requests = await pinned_requests(client, url, blocked)
                except OutboundError as exc:
                    raise FetchError(exc.message) from None
                resp = await send_first(client, requests)
                if not resp.is_redirect:
                    break
                await resp.aclose()
                url = urljoin(url, resp.headers["location"])
            else:
                raise FetchError(f"more than {MAX_REDIRECTS} redirects")
            try:
                return await _save(resp, url, part, dest, max_bytes=max_bytes, progress=progress)
            finally:
                await resp.aclose()
    except httpx.HTTPError as exc:
        raise FetchError(f"download failed: {exc or type(exc).__name__}") from exc
    except OSError as exc:
        raise FetchError(f"cannot store the download: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)


async def _save(
    resp: httpx.Response,
    url: str,
    part: Path,
    dest: Path,
    *,
    max_bytes: int,
    progress: Callable[[int], Awaitable[None]],
) -> int:
    """Stream a 200 response into ``part`` under the limits, then rename it to ``dest``."""
    if resp.status_code != 200:
        raise FetchError(f"download failed: HTTP {resp.status_code} from {url}")
    length = _content_length(resp)
    if length is not None and length > max_bytes:
        raise FetchError(f"the file is {length} bytes; the maximum is {max_bytes}")
    if length is not None and not room_for(dest.parent, length):
        raise FetchError(f"not enough disk space on the node for {length} bytes")
    total = 0
    shown = -1
    with open(part, "wb") as fh:
        async for chunk in resp.aiter_bytes(1024 * 1024):
            total += len(chunk)
            if total > max_bytes:
                raise FetchError(f"the file is larger than the maximum of {max_bytes} bytes")
            fh.write(chunk)
            if length and (percent := min(100, total * 100 // length)) > shown:
                shown = percent
                await progress(percent)
    if length is not None and total != length:
        raise FetchError(f"download truncated: got {total} of {length} bytes")
    os.replace(part, dest)
    return total


def _content_length(resp: httpx.Response) -> int | None:
    if "content-encoding" in resp.headers:
        return None  # the header counts encoded bytes
    try:
        return int(resp.headers["content-length"])
    except (KeyError, ValueError):
        return None
