"""karma.run's admin export, import and reset for sheesh's control-plane state.

A dump is gzip'd JSON ``{"format": "sheesh-dump", "version", "exportedAt", "users", "apiKeys", "images",
"snapshots", "vms", "execLogs", "records": {kind: [...]}}`` in the records' wire form (``sheesh.wire``): users
with their password hashes, API keys as hashes, image and snapshot metadata (not their files), VMs with their
firewall and ports, and the rerobots records. Machines, disks and files are not in it.

Reset destroys every VM, snapshot and user-made image, wipes the database and makes the admin again with the
new instance secret as password. Import fills a freshly reset control plane: VMs come back STOPPED (their
machines do not exist any more), and what could not be restored is listed in the reply, never dropped silently.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sheesh.auth.apikeys import ADMIN, ApiKeyAuth
from sheesh.config import Settings
from sheesh.control.ci import CiService
from sheesh.control.history import EXEC_LOG_KEEP
from sheesh.control.images import ImageService
from sheesh.control.instances import InstanceService
from sheesh.control.vms import VmService
from sheesh.errors import ConflictError, InvalidInputError, SheeshError
from sheesh.models import ApiKey, ExecLog, Image, NodeRecord, Role, Snapshot, SnapshotKind, User, Vm, VmState
from sheesh.store.repo import Store
from sheesh.store.rows import RECORD_ROWS, Record
from sheesh.wire import WireError, from_wire, to_wire
from sheesh.workspaces import CiJob, CiProject, Deployment, Instance, Reservation, VpnClient, WorkspaceType

log = logging.getLogger(__name__)

DUMP_FORMAT = "sheesh-dump"
DUMP_VERSION = 1
DUMPED = tuple(kind for kind in RECORD_ROWS if kind is not NodeRecord)
"""Record kinds in a dump: the rerobots ones (nodes belong to the hosts, not to the state being moved)."""
MAX_DUMP_BYTES = 256 * 1024 * 1024
"""Largest dump accepted, uncompressed."""


@dataclass
class ImportReport:
    users: int = 0
    api_keys: int = 0
    vms: int = 0
    snapshots: int = 0
    images: int = 0
    records: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class DumpService:
    store: Store
    settings: Settings
    vms: VmService
    images: ImageService
    auth: ApiKeyAuth
    instances: InstanceService
    ci: CiService

    def export(self) -> bytes:
        self.vms.history.flush()
        s = self.store
        users = s.list_users()
        vms = s.list_vms()
        dump = {
            "format": DUMP_FORMAT,
            "version": DUMP_VERSION,
            "exportedAt": datetime.now(UTC).isoformat(),
            "users": [to_wire(u) for u in users],
            "apiKeys": [to_wire(k) for u in users for k in s.list_api_keys(u.id)],
            "images": [{**to_wire(i.image), "path": str(i.path)} for i in s.list_images()],
            "snapshots": [to_wire(x) for x in s.list_snapshots() if x.kind == SnapshotKind.USER],
            "vms": [to_wire(v) for v in vms],
            "execLogs": [to_wire(e) for v in vms for e in s.list_exec_logs(v.id, None, 10_000)],
            "records": {kind.__name__: [to_wire(r) for r in _records(s) if type(r) is kind] for kind in DUMPED},
        }
        return gzip.compress(json.dumps(dump).encode())

    async def reset(self, secret: str) -> User:
        """Destroy every VM, snapshot and user-made image, wipe the database, make the admin anew with
        ``secret`` (its base64 instance secret) as password; the new admin."""
        await self.instances.close()
        await self.ci.close()
        self.vms.history.flush()
        for vm in self.store.list_vms():
            with contextlib.suppress(SheeshError):
                await self.vms.delete(vm.id)
            self.store.delete_vm(vm.id)
        for snap in self.store.list_snapshots():
            with contextlib.suppress(SheeshError):
                await self.vms.nodes.client(snap.node).delete_snapshot(snap.id)
            self.store.delete_snapshot(snap.id)
        custom = self.settings.resolved_image_dir() / "custom"
        builtin = [i for i in self.store.list_images() if i.path.parent != custom]
        if builtin and not any(i.image.is_default for i in builtin):
            self.store.set_default_image(builtin[0].image.id)
        for stored in self.store.list_images():
            if stored.path.parent == custom:
                self.images.delete(stored.image.id)
        self.store.wipe()
        self.auth.create_user(ADMIN, secret, Role.ADMIN)
        self.instances.workspaces.ensure_defaults()
        admin = self.store.get_user_by_name(ADMIN)
        assert admin is not None
        log.warning("the control plane was reset by an admin")
        return admin

    def _check_empty(self) -> None:
        s = self.store
        others = [u.username for u in s.list_users() if u.username != ADMIN]
        busy = [
            what
            for what, present in (
                ("VMs", bool(s.list_vms())),
                ("snapshots", any(x.kind == SnapshotKind.USER for x in s.list_snapshots())),
                ("users", bool(others)),
                (
                    "rerobots instances, reservations or CI projects",  # types and deployments: a start's defaults
                    any(not isinstance(r, WorkspaceType | Deployment) for r in _records(s)),
                ),
            )
            if present
        ]
        if busy:
            raise ConflictError(
                f"import needs an empty instance (reset it first with POST /admin/reset): it has {', '.join(busy)}"
            )

    async def import_(self, data: bytes) -> ImportReport:
        """Restore a dump into a freshly reset control plane (ConflictError otherwise). The dump is read and
        checked whole before anything is written."""
        self._check_empty()
        dump = _parse(_load(data))
        s = self.store
        admin = s.get_user_by_name(ADMIN)
        assert admin is not None
        report = ImportReport()
        owners = {u.id: admin.id for u in dump.users if u.username == ADMIN}  # the reset's admin stays

        def owner(value: str | None) -> str | None:
            return owners.get(value, value) if value is not None else None

        for user in dump.users:
            if user.username != ADMIN:
                s.add_user(user)
                report.users += 1
        for key in dump.api_keys:
            s.add_api_key(replace(key, user_id=owner(key.user_id) or admin.id))
            report.api_keys += 1
        known_images = {i.image.id for i in s.list_images()}
        for image in dump.images:
            if image.id not in known_images:
                report.notes.append(f"image {image.id} ({image.name}): its files are not in a dump; upload them again")
                s.add_image(replace(image, is_default=False), self.settings.resolved_image_dir() / "custom" / image.id)
                report.images += 1
        for snap in dump.snapshots:
            report.notes.append(f"snapshot {snap.id}: its memory and disk files are not in a dump; not restored")
        for vm in dump.vms:
            vm.owner_id, vm.snapshot_id = owner(vm.owner_id), None
            if vm.state != VmState.STOPPED:
                vm.state, vm.error = VmState.STOPPED, "restored from a dump: its machine and disk did not exist here"
            s.add_vm(vm)
            report.vms += 1
        vm_ids = {vm.id for vm in dump.vms}
        for entry in dump.exec_logs:
            if entry.vm_id in vm_ids:
                s.add_exec_log(entry, EXEC_LOG_KEEP)
        for wtype in s.list_records(WorkspaceType):  # the defaults a start made give way to the dump's
            s.delete_record(WorkspaceType, wtype.id)
        for dep in s.list_records(Deployment):
            s.delete_record(Deployment, dep.id)
        for rec in dump.records:
            if not isinstance(rec, WorkspaceType | Deployment | NodeRecord):
                rec.owner_id = owner(rec.owner_id)
            s.add_record(rec)
            report.records += 1
        await self.instances.recover()  # instances whose VM did not come back end; queues are served
        await self.ci.recover()
        return report


def _records(s: Store) -> list[Record]:
    return [
        *s.list_records(WorkspaceType),
        *s.list_records(Deployment),
        *s.list_records(Instance),
        *s.list_records(Reservation),
        *s.list_records(VpnClient),
        *s.list_records(CiProject),
        *s.list_records(CiJob),
    ]


@dataclass
class _Dump:
    users: list[User]
    api_keys: list[ApiKey]
    images: list[Image]
    snapshots: list[Snapshot]
    vms: list[Vm]
    exec_logs: list[ExecLog]
    records: list[Record]


def _parse(dump: dict[str, Any]) -> _Dump:
    def each(name: str) -> list[Any]:
        items = dump.get(name, [])
        if not isinstance(items, list):
            raise InvalidInputError(f"dump: {name} must be a list")
        return items

    records_raw = dump.get("records", {})
    if not isinstance(records_raw, dict):
        raise InvalidInputError("dump: records must be an object")
    kinds = {kind.__name__: kind for kind in DUMPED}
    unknown = set(records_raw) - set(kinds)
    if unknown:
        raise InvalidInputError(f"dump: unknown record kinds {sorted(unknown)}")
    try:
        images = []
        for raw in each("images"):
            if not isinstance(raw, dict):
                raise InvalidInputError("dump: images must be objects")
            images.append(from_wire(Image, {k: v for k, v in raw.items() if k != "path"}))
        return _Dump(
            users=[from_wire(User, r) for r in each("users")],
            api_keys=[from_wire(ApiKey, r) for r in each("apiKeys")],
            images=images,
            snapshots=[from_wire(Snapshot, r) for r in each("snapshots")],
            vms=[from_wire(Vm, r) for r in each("vms")],
            exec_logs=[from_wire(ExecLog, r) for r in each("execLogs")],
            records=[from_wire(kinds[name], r) for name, items in records_raw.items() for r in items],
        )
    except WireError as exc:
        raise InvalidInputError(f"dump: {exc.message}") from None


def _load(data: bytes) -> dict[str, Any]:
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError):
        raise InvalidInputError("the dump is not gzip data (send what GET /admin/export returned)") from None
    if len(raw) > MAX_DUMP_BYTES:
        raise InvalidInputError(f"the dump is larger than {MAX_DUMP_BYTES} bytes")
    try:
        dump = json.loads(raw)
    except ValueError:
        raise InvalidInputError("the dump is not JSON") from None
    if not isinstance(dump, dict) or dump.get("format") != DUMP_FORMAT:
        raise InvalidInputError("not a sheesh dump")
    if dump.get("version") != DUMP_VERSION:
        raise InvalidInputError(f"dump version {dump.get('version')!r}; this server reads version {DUMP_VERSION}")
    return dump
