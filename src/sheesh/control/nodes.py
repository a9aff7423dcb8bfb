"""The nodes VMs run on, as the control plane sees them: their records (region, address, state, the capacity they
last reported), a ``NodeClient`` for each, where new VMs go, and which nodes stopped reporting.

The embedded local node is always there (in-process); other hosts join with ``sheesh node`` (``RemoteNode``
over HTTP): ``add`` makes a node's record and secret token, the node's heartbeats (``heartbeat``) carry its
address and capacity. A node whose heartbeats stop for ``node_timeout_s`` is UNREACHABLE, and so are its
running VMs, until it reports again (``check``). ``DRAINING`` nodes keep their VMs but take no new ones.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sheesh.auth.sessions import SessionSigner
from sheesh.config import Settings
from sheesh.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, UnavailableError
from sheesh.models import LIVE_STATES, NodeRecord, NodeState, Vm, VmState
from sheesh.node.contract import NodeCapacity, NodeClient, NodeStatus, agent_token_key
from sheesh.store.repo import Store

log = logging.getLogger(__name__)
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True, kw_only=True)
class NodeView:
    record: NodeRecord
    capacity: NodeCapacity
    allocated_vcpus: int
    allocated_mem_mb: int
    vms: int

    @property
    def state(self) -> NodeState:
        return NodeState.UNREACHABLE if not self.record.reachable else self.record.state


ConnectFn = Callable[[NodeRecord], NodeClient]


@dataclass
class NodeService:
    """The nodes of this control plane and a client for each."""

    store: Store
    settings: Settings
    local: NodeClient
    connect: ConnectFn | None = None
    """Makes the client of a remote node from its record (``RemoteNode``); None: only the local node."""
    _clients: dict[str, tuple[str, NodeClient]] = field(default_factory=dict)
    _retired: list[NodeClient] = field(default_factory=list)
    """Clients of a node's earlier address (closed with the service)."""
    judging_since: datetime | None = None
    """When this process first checked heartbeats: none is held against a node for ``node_timeout_s`` after
    it (heartbeats sent while this control plane was down or starting had nowhere to go)."""

    # records

    def get(self, name: str) -> NodeRecord:
        rec = self.store.get_record(NodeRecord, name)
        if rec is None:
            raise NotFoundError(f"node {name} not found")
        return rec

    async def sync(self) -> NodeRecord:
        """The local node's record, made on the first start and kept up to date with the settings."""
        now = datetime.now(UTC)
        capacity = (await self.local.status()).capacity
        rec = self.store.get_record(NodeRecord, self.local.name)
        if rec is None:
            rec = NodeRecord(
                id=self.local.name,
                region=self.settings.node_region,
                address=self.settings.node_host(),
                port=self.settings.node_port,
                tls=self.settings.tls_on,
                state=NodeState.READY,
                created_at=now,
            )
            _take_capacity(rec, capacity)
            rec.last_heartbeat = now
            self.store.add_record(rec)
            return rec
        rec.region, rec.address, rec.port = (
            self.settings.node_region,
            self.settings.node_host(),
            self.settings.node_port,
        )
        rec.tls, rec.reachable, rec.last_heartbeat = self.settings.tls_on, True, now
        _take_capacity(rec, capacity)
        self.store.save_record(rec)
        return rec

    def add(self, name: str, region: str = "local") -> tuple[NodeRecord, str]:
        """Make the record of a node that will join with ``sheesh node``; returns it and its secret token (the
        node's ``SHEESH_NODE_TOKEN``)."""
        return add_node(self.store, name, region)

    def set_state(self, name: str, state: NodeState) -> NodeRecord:
        rec = self.get(name)
        rec.state = state
        self.store.save_record(rec)
        return rec

    def delete(self, name: str, *, force: bool = False) -> list[str]:
        """Forget node ``name``; refused while it holds VMs, unless ``force`` and the node is UNREACHABLE (a host
        that is gone for good): then its VMs and snapshots are forgotten with it. Returns the VMs forgotten."""
        rec = self.get(name)
        held = [v.id for v in self.store.list_vms() if v.node == name]
        if held and not (force and not rec.reachable):
            raise ConflictError(
                f"node {name} holds VMs; delete or move them first (force=true forgets them, UNREACHABLE nodes only)"
            )
        if name == self.local.name:
            raise ConflictError(f"node {name} is the embedded node of this control plane")
        for vm_id in held:
            log.warning("forgetting VM %s of node %s, removed while unreachable", vm_id, name)
            self.store.delete_vm(vm_id)
        for snap in self.store.list_snapshots():
            if snap.node == name:
                self.store.delete_snapshot(snap.id)
        self.store.delete_record(NodeRecord, name)
        if (cached := self._clients.pop(name, None)) is not None:
            self._retire(cached[1])
        return held

    # heartbeats and failure

    def authenticate(self, name: str, token: str) -> NodeRecord:
        """The record of node ``name`` if ``token`` is its secret; ForbiddenError otherwise."""
        rec = self.store.get_record(NodeRecord, name)
        if rec is None or not rec.token or not hmac.compare_digest(token.encode(), rec.token.encode()):
            raise ForbiddenError(f"wrong token for node {name}")
        return rec

    async def heartbeat(
        self,
        rec: NodeRecord,
        *,
        address: str,
        port: int,
        tls: bool,
        public_host: str | None,
        status: NodeStatus,
        region: str | None = None,
    ) -> NodeRecord:
        """Take a node's report: where it listens, its capacity, its running VMs. A node back from UNREACHABLE
        gets its VMs reconciled: still running -> RUNNING, gone -> STOPPED."""
        if status.name != rec.id:
            raise InvalidInputError(f"the node reports itself as {status.name}, not {rec.id}")
        was_reachable = rec.reachable
        rec.address, rec.port, rec.tls, rec.public_host = address, port, tls, public_host or address
        rec.reachable, rec.last_heartbeat = True, datetime.now(UTC)
        rec.running = sorted(status.running)
        rec.region = region or rec.region
        _take_capacity(rec, status.capacity)
        self.store.save_record(rec)
        if not was_reachable:
            log.info("node %s reports again", rec.id)
            self._back(rec.id, set(status.running))
        return rec

    def _back(self, name: str, running: set[str]) -> None:
        for vm in self.store.list_vms():
            if vm.node != name or vm.state != VmState.UNREACHABLE:
                continue
            vm.state = VmState.RUNNING if vm.id in running else VmState.STOPPED
            vm.error = None if vm.id in running else f"the VM's machine ended while node {name} was unreachable"
            self.store.save_vm(vm)

    def check(self) -> list[str]:
        """Mark nodes whose last heartbeat is older than ``node_timeout_s`` (and their running VMs)
        UNREACHABLE; returns their names. Not in the first ``node_timeout_s`` after this process's first
        check: a restarted control plane gives the nodes that long to find it again."""
        now = datetime.now(UTC)
        limit = now - timedelta(seconds=self.settings.node_timeout_s)
        if self.judging_since is None:
            self.judging_since = now
        if self.judging_since > limit:
            return []
        lost = []
        for rec in self.store.list_records(NodeRecord):
            if not rec.token or not rec.reachable or rec.last_heartbeat is None:
                continue  # the embedded nodes (ours, other replicas') do not send heartbeats
            if rec.last_heartbeat < limit:
                log.warning("node %s missed its heartbeats since %s: UNREACHABLE", rec.id, rec.last_heartbeat)
                rec.reachable = False
                self.store.save_record(rec)
                lost.append(rec.id)
                for vm in self.store.list_vms():
                    if vm.node == rec.id and vm.state in (VmState.RUNNING, VmState.PAUSED):
                        vm.state, vm.error = VmState.UNREACHABLE, f"node {rec.id} is unreachable"
                        self.store.save_vm(vm)
        return lost

    # clients

    def client(self, name: str) -> NodeClient:
        """The client of node ``name``; UnavailableError naming it when it is unreachable."""
        if name == self.local.name:
            return self.local
        rec = self.store.get_record(NodeRecord, name)
        if rec is None:
            raise UnavailableError(f"node {name} is not known to this control plane")
        if not rec.token:
            raise UnavailableError(f"node {name} is the embedded node of another control-plane replica")
        if not rec.reachable or not rec.address or self.connect is None:
            raise UnavailableError(f"node {name} is unreachable")
        key = f"{rec.address}:{rec.port}:{rec.tls}"
        cached = self._clients.get(name)
        if cached is None or cached[0] != key:
            if cached is not None:
                self._retire(cached[1])
            cached = (key, self.connect(rec))
            self._clients[name] = cached
        return cached[1]

    def public_host(self, name: str) -> str:
        """Where users reach node ``name`` (consoles, forwarded ports, VPNs)."""
        return self.endpoint(name)[0]

    def endpoint(self, name: str) -> tuple[str, int, bool]:
        """Host, port and TLS of node ``name``'s public WebSocket endpoints."""
        rec = self.store.get_record(NodeRecord, name) if name != self.local.name else None
        if rec is None:
            return self.settings.node_host(), self.settings.node_port, self.settings.tls_on
        return rec.public_host or rec.address, rec.port, rec.tls

    def agent_signer(self, name: str, local: SessionSigner) -> SessionSigner:
        """What signs agent tokens for node ``name``: ``local`` for the embedded node, a key derived from a
        remote node's secret for it."""
        rec = self.store.get_record(NodeRecord, name) if name != self.local.name else None
        if rec is None or not rec.token:
            return local
        return SessionSigner(agent_token_key(rec.token))

    def reported_running(self) -> dict[str, set[str]]:
        """The VMs each remote node said were running in its last heartbeat (the embedded nodes are not in it:
        ask them)."""
        return {r.id: set(r.running) for r in self.store.list_records(NodeRecord) if r.token}

    def of(self, vm: Vm) -> NodeClient:
        """The client of the node ``vm`` is on."""
        return self.client(vm.node)

    def reachable_clients(self) -> list[NodeClient]:
        """The local node and every reachable remote one."""
        clients = [self.local]
        for rec in self.store.list_records(NodeRecord):
            if rec.id != self.local.name and rec.reachable:
                with contextlib.suppress(UnavailableError):
                    clients.append(self.client(rec.id))
        return clients

    def _retire(self, client: NodeClient) -> None:
        self._retired.append(client)

    async def close(self) -> None:
        for client in [*(c for _, c in self._clients.values()), *self._retired]:
            await client.close()
        self._clients.clear()
        self._retired.clear()

    # views and placement

    async def views(self) -> list[NodeView]:
        await self.sync()
        vms = self.store.list_vms()
        views = []
        for rec in self.store.list_records(NodeRecord):
            mine = [v for v in vms if v.node == rec.id]
            live = [v for v in mine if v.state in LIVE_STATES]
            views.append(
                NodeView(
                    record=rec,
                    capacity=_capacity(rec),
                    allocated_vcpus=sum(v.cpu for v in live),
                    allocated_mem_mb=sum(v.mem_mb for v in live),
                    vms=len(mine),
                )
            )
        return views

    async def place(self, cpu: int, mem_mb: int, *, only: str | None = None) -> str:
        """The node a new VM of ``cpu``/``mem_mb`` goes to: a READY, reachable node with room for its memory
        (capacity x ``mem_overcommit``), the one with the most memory left (spreading load). ``only``: that
        node or none (a snapshot's restores). UnavailableError saying what was missing when none fits."""
        if self.store.get_record(NodeRecord, self.local.name) is None:
            await self.sync()
        vms = self.store.list_vms()
        reasons, best, best_free = [], None, -1.0
        for rec in self.store.list_records(NodeRecord):
            if only is not None and rec.id != only:
                continue
            if rec.id != self.local.name and not rec.token:
                reasons.append(f"node {rec.id} is the embedded node of another replica")
                continue
            if not rec.reachable:
                reasons.append(f"node {rec.id} is UNREACHABLE")
                continue
            if rec.state != NodeState.READY:
                reasons.append(f"node {rec.id} is {rec.state.value}")
                continue
            allocated = sum(v.mem_mb for v in vms if v.node == rec.id and v.state in LIVE_STATES)
            free = rec.mem_mb * self.settings.mem_overcommit - allocated
            if free < mem_mb:
                reasons.append(f"node {rec.id} has {max(0, int(free))} MiB of memory left")
                continue
            if free > best_free:
                best, best_free = rec.id, free
        if best is not None:
            return best
        if only is not None and not reasons:
            reasons.append(f"node {only} is not known")
        what = f"{cpu} vCPU / {mem_mb} MiB"
        raise UnavailableError(f"no node takes a new VM of {what}: " + "; ".join(reasons or ["there are no nodes"]))


def add_node(store: Store, name: str, region: str = "local") -> tuple[NodeRecord, str]:
    """Make the record of a node that will join with ``sheesh node``; returns it and its secret token."""
    if not name or len(name) > 63 or not set(name) <= NAME_CHARS or name[0] == "-":
        raise InvalidInputError("a node name is 1-63 lower-case letters, digits and '-'")
    if store.get_record(NodeRecord, name) is not None:
        raise ConflictError(f"node {name} exists")
    token = secrets.token_urlsafe(32)
    rec = NodeRecord(
        id=name,
        region=region,
        address="",
        state=NodeState.READY,
        created_at=datetime.now(UTC),
        token=token,
        reachable=False,
    )
    store.add_record(rec)
    return rec, token


def _take_capacity(rec: NodeRecord, cap: NodeCapacity) -> None:
    rec.vcpus, rec.mem_mb, rec.disk_mb, rec.disk_free_mb = cap.vcpus, cap.mem_mb, cap.disk_mb, cap.disk_free_mb


def _capacity(rec: NodeRecord) -> NodeCapacity:
    return NodeCapacity(vcpus=rec.vcpus, mem_mb=rec.mem_mb, disk_mb=rec.disk_mb, disk_free_mb=rec.disk_free_mb)
