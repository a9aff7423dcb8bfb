"""Downloads of user-supplied URLs (ISOs, cloud images) to a node file, with a size cap and progress."""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from sheesh.node.errors import MediaError

FREE_SPACE_MARGIN = 256 * 1024 * 1024
"""Space a download must leave free on the node's disk."""


class FetchError(MediaError):
    """A download failed; the message is safe to show to the user."""


def check_url(url: str | None) -> str:
    """``url`` if it is an absolute http(s) URL, else FetchError."""
    if not url:
        raise FetchError("URL query parameter required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("the URL must be an absolute http:// or https:// URL")
    return url


async def fetch(
    url: str, dest: Path, max_bytes: int, progress: Callable[[int], Awaitable[None]], timeout_s: float = 60.0
) -> int:
    """Download ``url`` into ``dest`` (written as ``dest.part`` and renamed when complete); returns its size.
    ``progress(percent)`` is awaited each time the percentage grows, when the server sends a length.
    More than ``max_bytes``, an HTTP error or too little disk space raise FetchError and leave no file."""
    check_url(url)
    part = dest.with_name(dest.name + ".part")
    try:
        async with (
            httpx.AsyncClient(follow_redirects=True, timeout=httpx.Timeout(timeout_s)) as client,
            client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp,
        ):
            if resp.status_code != 200:
                raise FetchError(f"download failed: HTTP {resp.status_code} from {url}")
            length = _content_length(resp)
            if length is not None and length > max_bytes:
                raise FetchError(f"the file is {length} bytes; the maximum is {max_bytes}")
            free = shutil.disk_usage(dest.parent).free
            if length is not None and length + FREE_SPACE_MARGIN > free:
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
    except httpx.HTTPError as exc:
        raise FetchError(f"download failed: {exc or type(exc).__name__}") from exc
    except OSError as exc:
        raise FetchError(f"cannot store the download: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)


def _content_length(resp: httpx.Response) -> int | None:
    if "content-encoding" in resp.headers:
        return None  # the header counts encoded bytes
    try:
        return int(resp.headers["content-length"])
    except (KeyError, ValueError):
        return None
