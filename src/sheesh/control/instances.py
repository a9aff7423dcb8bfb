"""Instances and reservations (rerobots): an instance is a sheesh VM made from a workspace type on a free
deployment, reached over SSH as root through a forwarded node port; when every matching deployment is busy a
request can queue as a reservation, served first come first served as deployments free up.

Making an instance ready (VM, port forward, firewall, SSH keys, VPN) and tearing it down run in background
tasks: requests answer at once and ``status`` moves INIT -> READY -> TERMINATING -> TERMINATED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sheesh.config import Settings
from sheesh.control.events import EventSender
from sheesh.control.sshkeys import check_public_key, generate_key_pair
from sheesh.control.vms import VmService
from sheesh.control.workspaces import WorkspaceService, applies, vm_request
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, SheeshError
from sheesh.models import FirewallAction, FirewallRule
from sheesh.store.repo import Store
from sheesh.workspaces import Deployment, Instance, InstanceStatus, Reservation, VpnStatus

log = logging.getLogger(__name__)

SSH_PORT = 22
OPEN_TO_ALL = FirewallRule("0.0.0.0/0", FirewallAction.ACCEPT)
"""A new instance's firewall: SSH (keys only) from anywhere, until the user narrows it."""
MAX_RESERVATIONS_PER_USER = 20
BUSY = "All matching workspace deployments are busy."


class BusyError(ConflictError):
    """Every matching deployment is in use and no reservation was asked for."""


class Vpns(Protocol):
    """The per-instance VPN (``vpn.py``); instances only start and stop it."""

    async def start(self, inst: Instance) -> None: ...
    async def stop(self, inst: Instance) -> None: ...


@dataclass(frozen=True)
class Launched:
    """Answer of ``POST /new``: an instance (``success``) or a reservation, and the generated private key."""

    success: bool
    id: str
    private_key: str | None


@dataclass
class InstanceService:
    store: Store
    settings: Settings
    vms: VmService
    workspaces: WorkspaceService
    events: EventSender
    vpns: Vpns
    _work: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _pick: asyncio.Lock = field(default_factory=asyncio.Lock)

    # --- reading -----------------------------------------------------------------------------------------
    def get(self, instance_id: str) -> Instance:
        inst = self.store.get_record(Instance, instance_id)
        if inst is None:
            raise NotFoundError("instance not found")
        return inst

    def list_instances(self, owner_id: str | None, *, include_terminated: bool, newest_first: bool) -> list[Instance]:
        """``owner_id`` None: everyone's (admins)."""
        found = [
            i
            for i in self.store.list_records(Instance)
            if (owner_id is None or i.owner_id == owner_id)
            and (include_terminated or i.status != InstanceStatus.TERMINATED)
        ]
        return sorted(found, key=lambda i: (i.created_at, i.id), reverse=newest_first)

    def reservation(self, reservation_id: str) -> Reservation:
        res = self.store.get_record(Reservation, reservation_id)
        if res is None:
            raise NotFoundError("reservation not found")
        return res

    def reservations(self, owner_id: str | None) -> list[Reservation]:
        return [r for r in self.store.list_records(Reservation) if owner_id is None or r.owner_id == owner_id]

    # --- requests ----------------------------------------------------------------------------------------
    def _candidates(self, target: str) -> list[Deployment]:
        """The deployments a request for ``target`` (a deployment id or a workspace type) may use."""
        if (dep := self.store.get_record(Deployment, target)) is not None:
            return [dep]
        self.workspaces.get_type(target)
        deps = [d for d in self.workspaces.list_deployments() if d.type == target]
        if not deps:
            raise NotFoundError(f"workspace type {target} has no deployments")
        return deps

    async def request(
        self,
        owner_id: str | None,
        target: str,
        *,
        public_key: str | None,
        vpn: bool = False,
        reserve: bool = False,
        eurl: str | None = None,
        duration_s: int | None = None,
    ) -> Launched:
        """``duration_s``: the instance ends by itself that long after it starts."""
        deps = self._candidates(target)
        wtype = self.workspaces.get_type(deps[0].type)
        if vpn and not wtype.vpn:
            raise InvalidInputError(f"workspace type {wtype.id} offers no VPN")
        if eurl is not None:
            self.events.check(eurl)
        private_key = None
        if public_key is None:
            pair = generate_key_pair("rerobots-instance")
            public_key, private_key = pair.public, pair.private_openssh
        else:
            public_key = check_public_key(public_key)
        async with self._pick:
            busy, waiting = self.workspaces.busy_ids(), self.store.list_records(Reservation)
            free = [d for d in deps if d.id not in busy and self.workspaces.queuelen(d, busy, waiting) == 0]
            if free:
                dep = min(free, key=lambda d: (d.icounter, d.created_at))
                inst = self._start(owner_id, dep, public_key, vpn, duration_s=duration_s)
                return Launched(True, inst.id, private_key)
            if not reserve:
                raise BusyError(f"{BUSY} Send reserve: true to queue a reservation.")
            if len(self.reservations(owner_id)) >= MAX_RESERVATIONS_PER_USER:
                raise ConflictError(f"at most {MAX_RESERVATIONS_PER_USER} reservations per user")
            res = Reservation(
                id=str(uuid.uuid4()),
                owner_id=owner_id,
                created_at=datetime.now(UTC),
                type=None if len(deps) == 1 and deps[0].id == target else wtype.id,
                deployment=target if len(deps) == 1 and deps[0].id == target else None,
                public_key=public_key,
                vpn=vpn,
                eurl=eurl,
                duration_s=duration_s,
            )
            self.store.add_record(res)
            return Launched(False, res.id, private_key)

    def cancel_reservation(self, reservation_id: str) -> None:
        self.reservation(reservation_id)
        self.store.delete_record(Reservation, reservation_id)

    async def terminate(self, instance_id: str) -> Instance:
        """Begin ending an instance (TERMINATING at once, TERMINATED when its VM is gone)."""
        inst = self.get(instance_id)
        if inst.status == InstanceStatus.TERMINATED:
            raise ConflictError("instance is already terminated")
        if inst.status == InstanceStatus.TERMINATING:
            return inst
        if (launching := self._work.pop(instance_id, None)) is not None:
            launching.cancel()
            await asyncio.gather(launching, return_exceptions=True)
            inst = self.get(instance_id)
        inst.status = InstanceStatus.TERMINATING
        self.store.save_record(inst)
        self._spawn(inst.id, self._teardown(inst.id))
        return inst

    # --- background work ---------------------------------------------------------------------------------
    def _spawn(self, instance_id: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                if self._work.get(instance_id) is task:
                    del self._work[instance_id]

        task = asyncio.create_task(run())
        self._work[instance_id] = task

    def _start(
        self,
        owner_id: str | None,
        dep: Deployment,
        public_key: str,
        vpn: bool,
        *,
        res: Reservation | None = None,
        duration_s: int | None = None,
    ) -> Instance:
        now = datetime.now(UTC)
        duration_s = res.duration_s if res else duration_s
        inst = Instance(
            id=str(uuid.uuid4()),
            owner_id=owner_id,
            deployment=dep.id,
            type=dep.type,
            region=dep.region,
            status=InstanceStatus.INIT,
            created_at=now,
            public_key=public_key,
            vpn=VpnStatus.PREPARING if vpn else VpnStatus.NIL,
            reservation=res.id if res else None,
            eurl=res.eurl if res else None,
            expires_at=now + timedelta(seconds=duration_s) if duration_s else None,
        )
        self.store.add_record(inst)
        self._spawn(inst.id, self._launch(inst.id))
        return inst

    async def _launch(self, instance_id: str) -> None:
        inst = self.get(instance_id)
        try:
            wtype = self.workspaces.get_type(inst.type)
            vm = await self.vms.create(vm_request(wtype, inst.owner_id))
            inst.vm_id = vm.id
            self.store.save_record(inst)
            await self.vms.add_firewall_rule(vm.id, OPEN_TO_ALL)
            forward = await self.vms.add_port(vm.id, SSH_PORT, "tcp")
            inst.hostkeys = await self.vms.node_of(vm.id).authorize_ssh(vm.id, [inst.public_key])
            inst.ssh_host, inst.ssh_port = self.vms.nodes.public_host(vm.node), forward.host_port
            inst.status = InstanceStatus.READY
            self.store.save_record(inst)
            if inst.vpn == VpnStatus.PREPARING:
                await self.vpns.start(inst)
        except SheeshError as exc:
            log.warning("instance %s could not be made ready: %s", instance_id, exc.message)
            inst = self.get(instance_id)
            inst.error = exc.message
            inst.status = InstanceStatus.TERMINATING
            self.store.save_record(inst)
            self._spawn(instance_id, self._teardown(instance_id))
        inst = self.get(instance_id)
        if inst.eurl and inst.reservation:
            event = {
                "event": "reservation",
                "reservation": inst.reservation,
                "instance": inst.id,
                "deployment": inst.deployment,
                "type": inst.type,
                "status": inst.status.value,
            }
            self.events.send(inst.eurl, event)

    async def _teardown(self, instance_id: str) -> None:
        inst = self.get(instance_id)
        try:
            if inst.vpn != VpnStatus.NIL:
                await self.vpns.stop(inst)
            if inst.vm_id is not None:
                with contextlib.suppress(NotFoundError):
                    await self.vms.delete(inst.vm_id)
        except SheeshError as exc:
            log.warning("instance %s: %s", instance_id, exc.message)
            inst.error = inst.error or exc.message
        inst.status, inst.ended_at, inst.vpn = InstanceStatus.TERMINATED, datetime.now(UTC), VpnStatus.NIL
        self.store.save_record(inst)
        dep = self.store.get_record(Deployment, inst.deployment)
        if dep is not None:
            dep.icounter += 1
            self.store.save_record(dep)
        await self.serve_queue()

    async def serve_queue(self) -> None:
        """Turn the oldest reservations into instances while matching deployments are free."""
        async with self._pick:
            busy = self.workspaces.busy_ids()
            deps = self.workspaces.list_deployments()
            for res in self.store.list_records(Reservation):
                dep = next((d for d in deps if d.id not in busy and applies(res, d)), None)
                if dep is None:
                    continue
                busy.add(dep.id)
                self.store.delete_record(Reservation, res.id)
                self._start(res.owner_id, dep, res.public_key, res.vpn, res=res)

    async def reconcile(self) -> None:
        """Called periodically: terminate the instances whose requested duration is over, and READY ones whose
        VM was deleted through /v1/vms."""
        now = datetime.now(UTC)
        for inst in self.store.list_records(Instance):
            live = inst.status in (InstanceStatus.INIT, InstanceStatus.READY)
            if live and inst.expires_at is not None and inst.expires_at <= now:
                log.info("instance %s reached its duration", inst.id)
                await self.terminate(inst.id)
            elif inst.status == InstanceStatus.READY and self.store.get_vm(inst.vm_id or "") is None:
                log.info("the VM of instance %s was deleted", inst.id)
                inst.error = "the instance's VM was deleted"
                self.store.save_record(inst)
                await self.terminate(inst.id)

    async def recover(self) -> None:
        """After a restart: launches that were cut short end (their VM is deleted), teardowns finish, and
        READY instances whose VM is gone end too; then the queue is served."""
        for inst in self.store.list_records(Instance):
            vm_gone = inst.vm_id is None or self.store.get_vm(inst.vm_id) is None
            if inst.status == InstanceStatus.INIT or (inst.status == InstanceStatus.READY and vm_gone):
                inst.error = "the instance was interrupted by a restart of the service"
                inst.status = InstanceStatus.TERMINATING
                self.store.save_record(inst)
            if inst.status == InstanceStatus.TERMINATING:
                self._spawn(inst.id, self._teardown(inst.id))
            elif inst.status == InstanceStatus.READY and inst.vpn != VpnStatus.NIL:
                await self.vpns.start(inst)
        await self.serve_queue()

    async def wait_idle(self) -> None:
        """Wait for the background work (tests, shutdown)."""
        while self._work:
            await asyncio.gather(*list(self._work.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._work.values()):
            task.cancel()
        await asyncio.gather(*self._work.values(), return_exceptions=True)
        await self.events.close()

    async def firewall(self, inst: Instance) -> list[FirewallRule] | None:
        """The instance's rules; None before its VM exists or after it ended (no chain)."""
        if inst.vm_id is None or inst.status == InstanceStatus.TERMINATED:
            return None
        vm = self.store.get_vm(inst.vm_id)
        return None if vm is None else vm.firewall

    def vm_of(self, inst: Instance) -> str:
        if inst.status != InstanceStatus.READY or inst.vm_id is None:
            raise ConflictError(f"instance is {inst.status.value}; it must be READY")
        return inst.vm_id
