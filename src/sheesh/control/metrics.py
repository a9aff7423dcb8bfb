"""Prometheus metrics of the control plane (``GET /metrics``): VMs by state, creates and their latency, exec
latency, node capacity and allocation, rate-limit rejections. One registry per process (not the library's
global one), so several apps in one test process do not mix their figures."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sheesh.models import LIVE_STATES, VmState
from sheesh.store.repo import Store

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _StateCollector(Collector):
    """Figures read at scrape time: VMs by state and by node, allocated vCPUs and memory per node."""

    def __init__(self, store: Store, capacity: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.store = store
        self.capacity = capacity

    def collect(self) -> Iterator[Metric]:
        vms = self.store.list_vms()
        by_state = GaugeMetricFamily("sheesh_vms", "VMs by state", labels=["state"])
        for state in VmState:
            by_state.add_metric([state.value], sum(1 for v in vms if v.state == state))
        yield by_state
        live = [v for v in vms if v.state in LIVE_STATES]
        cpus = GaugeMetricFamily("sheesh_node_vcpus", "vCPUs of a node", labels=["node", "kind"])
        mem = GaugeMetricFamily("sheesh_node_memory_mb", "Memory of a node (MiB)", labels=["node", "kind"])
        for node, vcpus, mem_mb in self.capacity():
            cpus.add_metric([node, "capacity"], vcpus)
            cpus.add_metric([node, "allocated"], sum(v.cpu for v in live if v.node == node))
            mem.add_metric([node, "capacity"], mem_mb)
            mem.add_metric([node, "allocated"], sum(v.mem_mb for v in live if v.node == node))
        yield cpus
        yield mem


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    nodes: list[tuple[str, int, int]] = field(default_factory=list)
    """(name, vCPUs, memory MiB) of each node, as last reported (refreshed before each scrape)."""

    def __post_init__(self) -> None:
        r = self.registry
        self.creates = Counter("sheesh_vm_creates", "VM creates by outcome", ["outcome"], registry=r)
        self.create_seconds = Histogram(
            "sheesh_vm_create_seconds", "Create latency (successful)", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.exec_seconds = Histogram(
            "sheesh_exec_seconds", "exec / run-ts / run-js latency", ["kind"], buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.rate_limited = Counter("sheesh_rate_limited", "Requests refused by a rate limit", ["bucket"], registry=r)
        self.leader = Gauge(
            "sheesh_leader", "1 when this replica runs the periodic work (reconcile, node checks)", registry=r
        )

    def watch(self, store: Store, capacity: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.registry.register(_StateCollector(store, capacity))
