"""Guest address allocation from the configured pool (persisted through the VM records)."""

from __future__ import annotations

import ipaddress
import socket

from sheesh.errors import UnavailableError


def template_ip(pool: str) -> str:
    """The last host address of ``pool``: shared by template-building VMs (isolated, never a user's VM)."""
    net = ipaddress.ip_network(pool)
    return str(net.broadcast_address - 1)


def allocate_ip(pool: str, used: set[str]) -> str:
    """Lowest free host address of ``pool``; the first host address (the gateway) and the last (templates)
    are never handed out."""
    net = ipaddress.ip_network(pool)
    hosts = net.hosts()
    next(hosts)  # gateway
    reserved = used | {template_ip(pool)}
    for addr in hosts:
        if str(addr) not in reserved:
            return str(addr)
    raise UnavailableError(f"guest address pool {pool} is exhausted")


def _bindable(port: int, protocol: str) -> bool:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port(port_range: tuple[int, int], taken: set[int], protocol: str = "tcp") -> int:
    """Lowest node port of ``port_range`` that no VM forwards and no host process listens on."""
    low, high = port_range
    for port in range(low, high + 1):
        if port not in taken and _bindable(port, protocol):
            return port
    raise UnavailableError(f"no free node port in {low}-{high}")
