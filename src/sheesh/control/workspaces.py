"""Workspace types and deployments (rerobots): the presets instances are made from and the slots they run
in, with the queue length and listing rules of seed 001. Instances and reservations: ``instances.py``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sheesh.config import Settings
from sheesh.control.images import resolve_image
from sheesh.control.vms import CreateVm
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError
from sheesh.store.repo import Store
from sheesh.workspaces import ACTIVE_INSTANCE, Deployment, Instance, Reservation, WorkspaceType

DEFAULT_TYPE = "basic_vm"
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_DEPLOYMENTS = 1000

SORTS: dict[str, tuple[Callable[[Deployment], object], bool]] = {
    "inc_wtype": (lambda d: (d.type, d.created_at, d.id), False),
    "dec_wtype": (lambda d: (d.type, d.created_at, d.id), True),
    "inc_created": (lambda d: (d.created_at, d.id), False),
    "dec_created": (lambda d: (d.created_at, d.id), True),
    "inc_count": (lambda d: (d.icounter, d.created_at, d.id), False),
    "dec_count": (lambda d: (d.icounter, d.created_at, d.id), True),
}


def vm_request(wtype: WorkspaceType, owner_id: str | None) -> CreateVm:
    """The VM an instance (or a CI job) of ``wtype`` runs in."""
    return CreateVm(
        cpu=wtype.cpu,
        mem_mb=wtype.mem_mb,
        allow_ips=[],
        outbound_internet=wtype.outbound_internet,
        image_id=wtype.image_id,
        disk_size_mb=wtype.disk_size_mb,
        owner_id=owner_id,
    )


def applies(res: Reservation, dep: Deployment) -> bool:
    """Whether ``res`` can be served by ``dep``."""
    return res.deployment == dep.id if res.deployment else res.type == dep.type


@dataclass(frozen=True, kw_only=True)
class DeploymentQuery:
    q: str | None = None
    maxlen: int | None = None
    types: list[str] | None = None
    sort_by: str = "inc_wtype"


@dataclass
class WorkspaceService:
    store: Store
    settings: Settings

    # --- workspace types ---------------------------------------------------------------------------------
    def list_types(self) -> list[WorkspaceType]:
        return sorted(self.store.list_records(WorkspaceType), key=lambda t: t.id)

    def get_type(self, name: str) -> WorkspaceType:
        wtype = self.store.get_record(WorkspaceType, name)
        if wtype is None:
            raise NotFoundError(f"workspace type {name} not found")
        return wtype

    def _check_type(self, wtype: WorkspaceType) -> None:
        if not TYPE_NAME.match(wtype.id):
            raise InvalidInputError("name must be 1-63 of a-z, 0-9 and _, starting with a letter")
        if wtype.image_id is not None:
            resolve_image(self.store, wtype.image_id)
        if wtype.disk_size_mb is not None and wtype.disk_size_mb > self.settings.max_disk_size_mb:
            raise InvalidInputError(f"diskSizeMb must be <= {self.settings.max_disk_size_mb}")

    def create_type(self, wtype: WorkspaceType) -> WorkspaceType:
        self._check_type(wtype)
        if self.store.get_record(WorkspaceType, wtype.id) is not None:
            raise ConflictError(f"workspace type {wtype.id} already exists")
        self.store.add_record(wtype)
        return wtype

    def update_type(self, wtype: WorkspaceType) -> WorkspaceType:
        """Change a type's shape; instances already running keep theirs."""
        old = self.get_type(wtype.id)
        wtype = replace(wtype, created_at=old.created_at)
        self._check_type(wtype)
        self.store.save_record(wtype)
        return wtype

    def delete_type(self, name: str) -> None:
        self.get_type(name)
        if any(d.type == name for d in self.store.list_records(Deployment)):
            raise ConflictError(f"workspace type {name} still has deployments; delete them first")
        self.store.delete_record(WorkspaceType, name)

    # --- deployments -------------------------------------------------------------------------------------
    def get(self, dep_id: str) -> Deployment:
        dep = self.store.get_record(Deployment, dep_id)
        if dep is None:
            raise NotFoundError(f"deployment {dep_id} not found")
        return dep

    def list_deployments(self) -> list[Deployment]:
        return self.store.list_records(Deployment)

    def add_deployment(self, type_name: str, region: str | None = None) -> Deployment:
        self.get_type(type_name)
        if len(self.store.list_records(Deployment)) >= MAX_DEPLOYMENTS:
            raise ConflictError(f"at most {MAX_DEPLOYMENTS} deployments")
        dep = Deployment(
            id=str(uuid.uuid4()),
            type=type_name,
            region=region or self.settings.node_region,
            node=self.settings.node_name,
            created_at=datetime.now(UTC),
        )
        self.store.add_record(dep)
        return dep

    def delete_deployment(self, dep_id: str) -> None:
        self.get(dep_id)
        if self.occupant(dep_id) is not None:
            raise ConflictError(f"deployment {dep_id} is in use; terminate its instance first")
        if any(r.deployment == dep_id for r in self.store.list_records(Reservation)):
            raise ConflictError(f"deployment {dep_id} has reservations")
        self.store.delete_record(Deployment, dep_id)

    def occupant(self, dep_id: str) -> Instance | None:
        """The instance using the deployment now (INIT, READY or TERMINATING), if any."""
        return next(
            (i for i in self.store.list_records(Instance) if i.deployment == dep_id and i.status in ACTIVE_INSTANCE),
            None,
        )

    def queuelen(
        self, dep: Deployment, busy: set[str] | None = None, reservations: list[Reservation] | None = None
    ) -> int:
        """0 when idle with no reservation that applies; else 1 + the reservations that apply (an upper
        bound: a reservation for a type can be served by any deployment of it). ``busy`` and ``reservations``
        (read from the store when not given) let a listing read them once for all its deployments."""
        if busy is None:
            busy = self.busy_ids()
        if reservations is None:
            reservations = self.store.list_records(Reservation)
        waiting = sum(1 for r in reservations if applies(r, dep))
        return 0 if dep.id not in busy and waiting == 0 else 1 + waiting

    def busy_ids(self) -> set[str]:
        return {i.deployment for i in self.store.list_records(Instance) if i.status in ACTIVE_INSTANCE}

    def search(self, query: DeploymentQuery) -> list[tuple[Deployment, int]]:
        """Deployments matching ``query`` with their queue lengths, in ``sort_by`` order."""
        if query.sort_by not in SORTS:
            raise InvalidInputError(f"sort_by must be one of {', '.join(SORTS)}")
        busy, reservations = self.busy_ids(), self.store.list_records(Reservation)
        found = []
        for dep in self.store.list_records(Deployment):
            if query.types and dep.type not in query.types:
                continue
            if query.q and not any(query.q.lower() in f.lower() for f in (dep.id, dep.type, dep.region)):
                continue
            qlen = self.queuelen(dep, busy, reservations)
            if query.maxlen is not None and qlen > query.maxlen:
                continue
            found.append((dep, qlen))
        key, reverse = SORTS[query.sort_by]
        return sorted(found, key=lambda pair: key(pair[0]), reverse=reverse)  # type: ignore[arg-type,return-value]

    def ensure_defaults(self) -> None:
        """On the first start: the ``basic_vm`` type (1 vCPU, 256 MiB) and a few deployments of it."""
        if self.store.list_records(WorkspaceType):
            return
        self.create_type(WorkspaceType(id=DEFAULT_TYPE, cpu=1, mem_mb=256, created_at=datetime.now(UTC)))
        for _ in range(self.settings.default_deployments):
            self.add_deployment(DEFAULT_TYPE)
