"""The nodes VMs run on, as the control plane sees them: their records (region, address, state), their
reported capacity, and what the control plane has allocated on them. Today the one node is the embedded local
one; ``DRAINING`` keeps a node's VMs but sends no new VM to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sheesh.config import Settings
from sheesh.errors import ConflictError, NotFoundError, UnavailableError
from sheesh.models import NodeRecord, NodeState, VmState
from sheesh.node.contract import NodeClient, NodeStatus
from sheesh.store.repo import Store

LIVE = (VmState.RUNNING, VmState.PAUSED, VmState.STARTING, VmState.CREATING, VmState.STOPPING)


@dataclass(frozen=True, kw_only=True)
class NodeView:
    record: NodeRecord
    status: NodeStatus
    allocated_vcpus: int
    allocated_mem_mb: int
    vms: int


@dataclass
class NodeService:
    store: Store
    settings: Settings
    node: NodeClient

    def sync(self) -> NodeRecord:
        """The local node's record, made on the first start and kept up to date with the settings."""
        now = datetime.now(UTC)
        rec = self.store.get_record(NodeRecord, self.node.name)
        if rec is None:
            rec = NodeRecord(
                id=self.node.name,
                region=self.settings.node_region,
                address=self.settings.node_host(),
                state=NodeState.READY,
                created_at=now,
                last_heartbeat=now,
            )
            self.store.add_record(rec)
            return rec
        rec.region, rec.address, rec.last_heartbeat = self.settings.node_region, self.settings.node_host(), now
        self.store.save_record(rec)
        return rec

    def get(self, name: str) -> NodeRecord:
        rec = self.store.get_record(NodeRecord, name)
        if rec is None:
            raise NotFoundError(f"node {name} not found")
        return rec

    async def views(self) -> list[NodeView]:
        status = await self.node.status()
        rec = self.sync()
        vms = [v for v in self.store.list_vms() if v.node == rec.id]
        live = [v for v in vms if v.state in LIVE]
        return [
            NodeView(
                record=rec,
                status=status,
                allocated_vcpus=sum(v.cpu for v in live),
                allocated_mem_mb=sum(v.mem_mb for v in live),
                vms=len(vms),
            )
        ]

    def set_state(self, name: str, state: NodeState) -> NodeRecord:
        rec = self.get(name)
        rec.state = state
        self.store.save_record(rec)
        return rec

    def delete(self, name: str) -> None:
        self.get(name)
        if any(v.node == name for v in self.store.list_vms()):
            raise ConflictError(f"node {name} holds VMs; delete or move them first")
        if name == self.node.name:
            raise ConflictError(f"node {name} is the embedded node of this control plane")
        self.store.delete_record(NodeRecord, name)

    def check_schedulable(self) -> str:
        """The node a new VM goes to; UnavailableError naming why when there is none."""
        rec = self.store.get_record(NodeRecord, self.node.name)
        if rec is not None and rec.state != NodeState.READY:
            raise UnavailableError(f"no node takes new VMs: node {rec.id} is {rec.state.value}")
        return self.node.name
