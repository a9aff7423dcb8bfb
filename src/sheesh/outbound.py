"""Requests to user-supplied URLs (a node's ISO and cloud-image downloads, the control plane's event
callbacks) that cannot be aimed at addresses sheesh must not reach.

Each host name is resolved once, every address is checked against the blocked networks (loopback, link-local
with the clouds' metadata services, the guest network...), and the connection goes to the checked address (the
name stays in the Host header and the TLS server name), so a DNS answer cannot change between check and use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

import httpx

from sheesh.errors import InvalidInputError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundError(InvalidInputError):
    """A URL sheesh will not send a request to (malformed, unresolvable, or at a blocked address)."""


def check_url(url: str | None) -> str:
    """``url`` if it is an absolute http(s) URL, else OutboundError."""
    if not url:
        raise OutboundError("URL query parameter required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError("the URL must be an absolute http:// or https:// URL")
    return url


def _blocked(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, blocked: Sequence[Network]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in blocked)


async def checked_addresses(
    host: str, port: int, blocked: Sequence[Network]
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` resolves to; OutboundError if it does not resolve or any of them is blocked."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutboundError(f"cannot resolve {host}: {exc.strerror}") from None
    addrs = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    for addr in addrs:
        if _blocked(addr, blocked):
            raise OutboundError(f"{host} is {addr}, an address sheesh does not send requests to")
    return addrs


async def pinned_requests(
    client: httpx.AsyncClient,
    url: str,
    blocked: Sequence[Network],
    *,
    method: str = "GET",
    json: object = None,
) -> list[httpx.Request]:
    """Requests for ``url``, one per address of its host (to try in order); OutboundError if the host does not
    resolve or any of its addresses is in ``blocked``. With nothing blocked: one plain request."""
    parts = urlsplit(check_url(url))
    headers = {"Accept-Encoding": "identity"}
    if not blocked:
        return [client.build_request(method, url, headers=headers, json=json)]
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addrs = await checked_addresses(host, port, blocked)
    headers["Host"] = parts.netloc.rpartition("@")[2]
    auth = httpx.BasicAuth(parts.username, parts.password or "") if parts.username else None
    requests = []
    for addr in addrs:
        literal = f"[{addr}]" if addr.version == 6 else str(addr)
        target = SplitResult(parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, "").geturl()
        request = client.build_request(method, target, headers=headers, json=json, extensions={"sni_hostname": host})
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
