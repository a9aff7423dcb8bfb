"""Guest address allocation from the configured pool (persisted through the VM records)."""

from __future__ import annotations

import ipaddress

from sheesh.errors import UnavailableError


def allocate_ip(pool: str, used: set[str]) -> str:
    """Lowest free host address of ``pool``; the first host address is the gateway and never handed out."""
    net = ipaddress.ip_network(pool)
    hosts = net.hosts()
    next(hosts)  # gateway
    for addr in hosts:
        if str(addr) not in used:
            return str(addr)
    raise UnavailableError(f"guest address pool {pool} is exhausted")
