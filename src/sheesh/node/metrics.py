"""``GET /metrics`` on the node port: the node's Prometheus metrics (capacity, free disk, running VMs), read
from ``NodeAgent.status()`` at each scrape. Counts only: nothing here names a VM or a user."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from sheesh.node.contract import NodeStatus


def metrics_endpoint(status: Callable[[], Awaitable[NodeStatus]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(_: Request) -> Response:
        now = await status()
        registry = CollectorRegistry()
        labels = {"node": now.name}
        figures = {
            "sheesh_node_capacity_vcpus": ("vCPUs of the host", now.capacity.vcpus),
            "sheesh_node_capacity_memory_mb": ("Memory of the host (MiB)", now.capacity.mem_mb),
            "sheesh_node_disk_mb": ("Disk of the VM folder (MiB)", now.capacity.disk_mb),
            "sheesh_node_disk_free_mb": ("Free disk of the VM folder (MiB)", now.capacity.disk_free_mb),
            "sheesh_node_running_vms": ("Machines running on the node", len(now.running)),
        }
        for name, (doc, value) in figures.items():
            Gauge(name, doc, list(labels), registry=registry).labels(**labels).set(value)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return endpoint
