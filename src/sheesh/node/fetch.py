"""Downloads of user-supplied URLs (ISOs, cloud images) to a node file, with a size cap and progress.

The node refuses addresses in its blocked networks (loopback, link-local with the clouds' metadata services,
the guest network...): each host name is resolved once, every address is checked, and the connection goes to
the checked address (the name stays in the Host header and the TLS server name), so a DNS answer cannot
change between check and use. Redirects are followed by hand (at most 5), each one checked the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from sheesh.node.errors import MediaError

FREE_SPACE_MARGIN = 256 * 1024 * 1024
"""Space a download must leave free on the node's disk."""
MAX_REDIRECTS = 5
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def room_for(directory: Path, size: int) -> bool:
    """Whether ``size`` more bytes fit in ``directory``'s file system with ``FREE_SPACE_MARGIN`` to spare."""
    return size + FREE_SPACE_MARGIN <= shutil.disk_usage(directory).free


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


def _blocked(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, blocked: Sequence[Network]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in blocked)


async def pinned_requests(client: httpx.AsyncClient, url: str, blocked: Sequence[Network]) -> list[httpx.Request]:
    """GETs of ``url``, one per address of its host (to try in order); FetchError if the host does not
    resolve or any of its addresses is in ``blocked``. With nothing blocked: one plain request."""
    parts = urlsplit(check_url(url))
    headers = {"Accept-Encoding": "identity"}
    if not blocked:
        return [client.build_request("GET", url, headers=headers)]
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror}") from None
    addrs = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    for addr in addrs:
        if _blocked(addr, blocked):
            raise FetchError(f"{host} is {addr}, an address this node does not download from")
    headers["Host"] = parts.netloc.rpartition("@")[2]
    auth = httpx.BasicAuth(parts.username, parts.password or "") if parts.username else None
    requests = []
    for addr in addrs:
        literal = f"[{addr}]" if addr.version == 6 else str(addr)
        target = SplitResult(parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, "").geturl()
        request = client.build_request("GET", target, headers=headers, extensions={"sni_hostname": host})
        requests.append(next(auth.auth_flow(request)) if auth is not None else request)
    return requests


async def send_first(client: httpx.AsyncClient, requests: list[httpx.Request]) -> httpx.Response:
    """The response from the first address that accepts the connection."""
    for request in requests[:-1]:
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError:
            continue
    return await client.send(requests[-1], stream=True)


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
                resp = await send_first(client, await pinned_requests(client, url, blocked))
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
