"""The JSON bodies of ``GET /v1/vms`` (per viewer) and ``GET /v1/vms/:id`` (per VM), kept until a VM changes.

A list of 100 VMs costs about 4 ms of CPU to read, build and serialise; it is asked for far more often
than VMs change (UIs and SDKs poll it). Each body is kept with the store's ``vms_version`` it was built at,
which every VM write moves on in the same transaction, in whichever replica made it: a body is served
again only while that number has not moved, so no replica serves a list older than the database. The
console endpoints in it come from the node registry, not the VM rows: they are compared on every hit. One
VM's body is kept with its owner, whom the viewer is checked against on every hit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Endpoint = tuple[str, int, bool]


@dataclass(frozen=True, kw_only=True)
class CachedList:
    version: int
    endpoints: dict[str, Endpoint]
    """The console endpoint of each node the listed VMs are on, as it was when the body was built."""
    body: bytes
    owner_id: str | None = None
    """One VM's body: the VM's owner."""


class VmListCache:
    """The newest body per scope (an admin's "all", one user's VMs, one VM), at most ``size`` of them."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._lists: OrderedDict[str, CachedList] = OrderedDict()

    def get(self, scope: str, version: int, endpoint: Callable[[str], Endpoint]) -> CachedList | None:
        """The body of ``scope`` if it was built at ``version`` and every node's console endpoint in it is still
        what ``endpoint`` (the node registry) says."""
        cached = self._lists.get(scope)
        if cached is None or cached.version != version:
            return None
        if any(endpoint(node) != e for node, e in cached.endpoints.items()):
            return None
        self._lists.move_to_end(scope)
        return cached

    def put(self, scope: str, cached: CachedList) -> None:
        self._lists[scope] = cached
        self._lists.move_to_end(scope)
        while len(self._lists) > self.size:
            self._lists.popitem(last=False)
