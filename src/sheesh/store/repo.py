"""The ``Store`` seam used by the control plane and its SQL implementation (the fake: ``store/memory.py``;
row conversions: ``store/rows.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from sheesh.models import (
    ApiKey,
    ExecKind,
    ExecLog,
    Image,
    Snapshot,
    User,
    Vm,
)
from sheesh.store.errors import StoreError
from sheesh.store.hotreads import HotRead
from sheesh.store.rows import (
    RECORD_ROWS,
    R,
    Record,
    StoredImage,
    exec_log_from_row,
    image_from_row,
    key_from_row,
    record_from_row,
    record_values,
    snapshot_from_row,
    user_from_row,
    user_values,
    vm_from_row,
    vm_values,
)
from sheesh.store.tables import (
    RECORD_TABLES,
    ApiKeyRow,
    ChangeCounterRow,
    ExecLogRow,
    ImageRow,
    NodeRow,
    RateHitRow,
    SnapshotRow,
    UserRow,
    VmRow,
)


class Store(Protocol):
    """Persistence of VMs, images and API-key hashes. Getters return copies; ``None`` when absent."""

    def add_vm(self, vm: Vm) -> None: ...
    def save_vm(self, vm: Vm) -> None: ...
    def get_vm(self, vm_id: str) -> Vm | None: ...
    def list_vms(self) -> list[Vm]: ...
    def delete_vm(self, vm_id: str) -> None:
        """Remove the VM and its execution history."""
        ...

    def vms_version(self) -> int:
        """A number that every write of a VM (add, save, delete, wipe) moves on, in the same transaction, in
        whichever replica made it: a list read after reading it is at least that new."""
        ...

    def used_ips(self) -> set[str]: ...

    def add_exec_log(self, entry: ExecLog, keep: int) -> None:
        """Record one execution; only the VM's newest ``keep`` entries are kept."""
        ...

    def list_exec_logs(self, vm_id: str, kind: ExecKind | None, limit: int) -> list[ExecLog]:
        """The VM's newest entries first (of ``kind`` when given)."""
        ...

    def add_image(self, image: Image, path: Path) -> None: ...
    def get_image(self, image_id: str) -> StoredImage | None: ...
    def list_images(self) -> list[StoredImage]: ...
    def set_default_image(self, image_id: str) -> None: ...
    def update_image_size(self, image_id: str, rootfs_size_mb: int) -> None: ...
    def delete_image(self, image_id: str) -> None: ...

    def add_snapshot(self, snap: Snapshot) -> None: ...
    def get_snapshot(self, snapshot_id: str) -> Snapshot | None: ...
    def list_snapshots(self) -> list[Snapshot]: ...
    def delete_snapshot(self, snapshot_id: str) -> None: ...

    def add_api_key(self, key: ApiKey) -> None: ...
    def find_api_key(self, key_hash: str) -> ApiKey | None: ...
    def get_api_key(self, key_id: str) -> ApiKey | None: ...
    def list_api_keys(self, user_id: str) -> list[ApiKey]: ...
    def delete_api_key(self, key_id: str) -> None: ...
    def delete_user_api_keys(self, user_id: str) -> int: ...
    def count_api_keys(self) -> int: ...

    def add_user(self, user: User) -> None: ...
    def save_user(self, user: User) -> None: ...
    def get_user(self, user_id: str) -> User | None: ...
    def get_user_by_name(self, username: str) -> User | None: ...
    def list_users(self) -> list[User]: ...
    def delete_user(self, user_id: str) -> None:
        """Remove the user and their API keys."""
        ...

    def add_record(self, rec: Record) -> None:
        """Store a new rerobots record (workspace type, deployment, instance, ...); a duplicate id: StoreError."""
        ...

    def save_record(self, rec: Record) -> None:
        """Replace the stored record with the same id (none: nothing happens)."""
        ...

    def get_record(self, kind: type[R], record_id: str) -> R | None: ...
    def list_records(self, kind: type[R]) -> list[R]:
        """Oldest first."""
        ...

    def delete_record(self, kind: type[R], record_id: str) -> None: ...

    def wipe(self) -> None:
        """Delete every user, API key, VM (with its history), snapshot and rerobots record; images and nodes
        stay."""
        ...

    def rate_hit(self, key: str, limit: int, window_s: float, now: float) -> tuple[bool, int, float]:
        """Count a request of ``key`` at ``now`` (epoch seconds) unless ``limit`` requests were counted in the
        last ``window_s``; returns whether it was counted, how many are counted now and the oldest one's time.
        Atomic across processes sharing the database."""
        ...

    def lead(self) -> bool:
        """Whether this process runs the periodic work (reconcile, node checks, TTLs, reservations): on
        PostgreSQL the one holding a session advisory lock (several replicas, one leader; a leader that dies
        frees it), elsewhere always."""
        ...

    def close(self) -> None: ...


LEADER_LOCK = 0x5EE5_0001
"""PostgreSQL advisory lock key of the replica that runs the periodic work."""


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest alembic revision; StoreError naming both revisions when the database was
    migrated by a newer sheesh (this one cannot know that schema)."""
    cfg = Config(str(Path(__file__).with_name("alembic.ini")))
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    scripts = ScriptDirectory.from_config(cfg)
    with engine.begin() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
            raise StoreError(
                f"the database is at schema revision {current}, newer than this sheesh knows "
                f"(its newest is {scripts.get_current_head()}): upgrade sheesh, or point SHEESH_DATABASE_URL "
                "at another database"
            )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


VMS_COUNTER = "vms"
"""The ``change_counters`` row moved by every VM write (``Store.vms_version``)."""
# built once (building and keying a select costs more than running it on SQLite)
_VMS = select(*VmRow.__table__.c).order_by(VmRow.created_at, VmRow.id)


def _count_change(s: Session, table: str) -> None:
    s.execute(update(ChangeCounterRow).where(ChangeCounterRow.name == table).values(value=ChangeCounterRow.value + 1))


SQLITE_POOL_SIZE = 48
"""Pooled SQLite connections: more than the request threads, so none is opened and closed per request."""


class SqlStore:
    """``Store`` on SQLAlchemy (SQLite by default, PostgreSQL via URL). Migrates on open."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            if url.startswith("sqlite"):
                # one connection per worker thread kept open: a new SQLite connection costs its PRAGMAs and a
                # file lock, and requests run on up to 40 threads (anyio's pool)
                self.engine = create_engine(url, pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE)
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url)
            migrate(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open database: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._vm_by_id = HotRead(self.engine, VmRow.__table__, "id")
        self._key_by_hash = HotRead(self.engine, ApiKeyRow.__table__, "key_hash")
        self._user_by_id = HotRead(self.engine, UserRow.__table__, "id")
        self._user_by_name = HotRead(self.engine, UserRow.__table__, "username")
        self._counter = HotRead(self.engine, ChangeCounterRow.__table__, "name")
        self._leader: Connection | None = None
        self._rate_calls = 0

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """A transaction; driver errors (a duplicate key, a lost connection) become ``StoreError``."""
        try:
            with self._sessions.begin() as s:
                yield s
        except IntegrityError as exc:
            raise StoreError(f"conflicting record: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._sessions() as s:
                yield s
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc}") from exc

    @contextlib.contextmanager
    def _rows(self) -> Iterator[Connection]:
        """A Core connection for plain reads of many rows: a select through an ORM session costs about four
        times as much (the single-row reads behind every request go further: ``hotreads``)."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc}") from exc

    def add_vm(self, vm: Vm) -> None:
        with self._write() as s:
            s.add(VmRow(**vm_values(vm)))
            _count_change(s, VMS_COUNTER)

    def save_vm(self, vm: Vm) -> None:
        with self._write() as s:
            s.execute(update(VmRow).where(VmRow.id == vm.id).values(**vm_values(vm)))
            _count_change(s, VMS_COUNTER)

    def vms_version(self) -> int:
        row = self._counter.one(VMS_COUNTER)  # (behind every GET /v1/vms)
        if row is None:
            raise StoreError(f"the {VMS_COUNTER} change counter is missing: the database was not migrated")
        return int(row["value"])

    def get_vm(self, vm_id: str) -> Vm | None:
        row = self._vm_by_id.one(vm_id)
        return vm_from_row(row) if row else None

    def list_vms(self) -> list[Vm]:
        with self._rows() as conn:
            return [vm_from_row(r) for r in conn.execute(_VMS)]

    def delete_vm(self, vm_id: str) -> None:
        with self._write() as s:
            s.execute(delete(ExecLogRow).where(ExecLogRow.vm_id == vm_id))
            s.execute(delete(VmRow).where(VmRow.id == vm_id))
            _count_change(s, VMS_COUNTER)

    def used_ips(self) -> set[str]:
        with self._read() as s:
            return set(s.scalars(select(VmRow.guest_ip)))

    def add_exec_log(self, entry: ExecLog, keep: int) -> None:
        values = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
        with self._write() as s:
            s.add(ExecLogRow(**{**values, "kind": entry.kind.value}))
            s.flush()
            newest = (
                select(ExecLogRow.id)
                .where(ExecLogRow.vm_id == entry.vm_id)
                .order_by(ExecLogRow.started_at.desc(), ExecLogRow.id.desc())
                .limit(keep)
            )
            s.execute(
                delete(ExecLogRow).where(
                    ExecLogRow.vm_id == entry.vm_id, ExecLogRow.id.not_in(newest.scalar_subquery())
                )
            )

    def list_exec_logs(self, vm_id: str, kind: ExecKind | None, limit: int) -> list[ExecLog]:
        query = select(ExecLogRow).where(ExecLogRow.vm_id == vm_id)
        if kind is not None:
            query = query.where(ExecLogRow.kind == kind.value)
        query = query.order_by(ExecLogRow.started_at.desc(), ExecLogRow.id.desc()).limit(limit)
        with self._read() as s:
            return [exec_log_from_row(r) for r in s.scalars(query)]

    def add_image(self, image: Image, path: Path) -> None:
        with self._write() as s:
            s.add(
                ImageRow(
                    id=image.id,
                    name=image.name,
                    description=image.description,
                    path=str(path),
                    rootfs_size_mb=image.rootfs_size_mb,
                    is_default=image.is_default,
                    created_at=image.created_at,
                )
            )

    def get_image(self, image_id: str) -> StoredImage | None:
        with self._read() as s:
            row = s.get(ImageRow, image_id)
            return image_from_row(row) if row else None

    def list_images(self) -> list[StoredImage]:
        with self._read() as s:
            return [image_from_row(r) for r in s.scalars(select(ImageRow).order_by(ImageRow.created_at))]

    def set_default_image(self, image_id: str) -> None:
        with self._write() as s:
            s.execute(update(ImageRow).values(is_default=ImageRow.id == image_id))

    def update_image_size(self, image_id: str, rootfs_size_mb: int) -> None:
        with self._write() as s:
            s.execute(update(ImageRow).where(ImageRow.id == image_id).values(rootfs_size_mb=rootfs_size_mb))

    def delete_image(self, image_id: str) -> None:
        with self._write() as s:
            s.execute(delete(ImageRow).where(ImageRow.id == image_id))

    def add_snapshot(self, snap: Snapshot) -> None:
        with self._write() as s:
            s.add(
                SnapshotRow(
                    id=snap.id,
                    vm_id=snap.vm_id,
                    created_at=snap.created_at,
                    cpu=snap.cpu,
                    mem_mb=snap.mem_mb,
                    image_id=snap.image_id,
                    disk_size_mb=snap.disk_size_mb,
                    kind=snap.kind.value,
                    save_ms=snap.save_ms,
                    owner_id=snap.owner_id,
                    node=snap.node,
                )
            )

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        with self._read() as s:
            row = s.get(SnapshotRow, snapshot_id)
            return snapshot_from_row(row) if row else None

    def list_snapshots(self) -> list[Snapshot]:
        with self._read() as s:
            rows = s.scalars(select(SnapshotRow).order_by(SnapshotRow.created_at, SnapshotRow.id))
            return [snapshot_from_row(r) for r in rows]

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._write() as s:
            s.execute(delete(SnapshotRow).where(SnapshotRow.id == snapshot_id))

    def add_api_key(self, key: ApiKey) -> None:
        with self._write() as s:
            s.add(
                ApiKeyRow(
                    id=key.id,
                    key_hash=key.key_hash,
                    label=key.label,
                    created_at=key.created_at,
                    user_id=key.user_id,
                    expires_at=key.expires_at,
                )
            )

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        row = self._key_by_hash.one(key_hash)
        return key_from_row(row) if row else None

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self._read() as s:
            row = s.get(ApiKeyRow, key_id)
            return key_from_row(row) if row else None

    def list_api_keys(self, user_id: str) -> list[ApiKey]:
        with self._read() as s:
            rows = s.scalars(select(ApiKeyRow).where(ApiKeyRow.user_id == user_id).order_by(ApiKeyRow.created_at))
            return [key_from_row(r) for r in rows]

    def delete_api_key(self, key_id: str) -> None:
        with self._write() as s:
            s.execute(delete(ApiKeyRow).where(ApiKeyRow.id == key_id))

    def delete_user_api_keys(self, user_id: str) -> int:
        with self._write() as s:
            ids = list(s.scalars(select(ApiKeyRow.id).where(ApiKeyRow.user_id == user_id)))
            s.execute(delete(ApiKeyRow).where(ApiKeyRow.user_id == user_id))
            return len(ids)

    def count_api_keys(self) -> int:
        with self._read() as s:
            return len(list(s.scalars(select(ApiKeyRow.id))))

    def add_user(self, user: User) -> None:
        with self._write() as s:
            s.add(UserRow(**user_values(user)))

    def save_user(self, user: User) -> None:
        with self._write() as s:
            s.execute(update(UserRow).where(UserRow.id == user.id).values(**user_values(user)))

    def get_user(self, user_id: str) -> User | None:
        row = self._user_by_id.one(user_id)
        return user_from_row(row) if row else None

    def get_user_by_name(self, username: str) -> User | None:
        row = self._user_by_name.one(username)
        return user_from_row(row) if row else None

    def list_users(self) -> list[User]:
        with self._read() as s:
            return [user_from_row(r) for r in s.scalars(select(UserRow).order_by(UserRow.created_at))]

    def delete_user(self, user_id: str) -> None:
        with self._write() as s:
            s.execute(delete(ApiKeyRow).where(ApiKeyRow.user_id == user_id))
            s.execute(delete(UserRow).where(UserRow.id == user_id))

    def add_record(self, rec: Record) -> None:
        with self._write() as s:
            s.add(RECORD_ROWS[type(rec)](**record_values(rec)))

    def save_record(self, rec: Record) -> None:
        table = RECORD_ROWS[type(rec)]
        with self._write() as s:
            s.execute(update(table).where(table.id == rec.id).values(**record_values(rec)))

    def get_record(self, kind: type[R], record_id: str) -> R | None:
        with self._read() as s:
            row = s.get(RECORD_ROWS[kind], record_id)
            return record_from_row(kind, row) if row else None

    def list_records(self, kind: type[R]) -> list[R]:
        table = RECORD_ROWS[kind]
        with self._read() as s:
            return [record_from_row(kind, r) for r in s.scalars(select(table).order_by(table.created_at, table.id))]

    def delete_record(self, kind: type[R], record_id: str) -> None:
        table = RECORD_ROWS[kind]
        with self._write() as s:
            s.execute(delete(table).where(table.id == record_id))

    def wipe(self) -> None:
        with self._write() as s:
            for table in (ExecLogRow, VmRow, SnapshotRow, ApiKeyRow, UserRow, *RECORD_TABLES):
                if table is not NodeRow:
                    s.execute(delete(table))
            _count_change(s, VMS_COUNTER)

    def rate_hit(self, key: str, limit: int, window_s: float, now: float) -> tuple[bool, int, float]:
        key = key[:255]
        with self._write() as s:
            if self.engine.dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
            s.execute(delete(RateHitRow).where(RateHitRow.key == key, RateHitRow.at <= now - window_s))
            count, oldest = s.execute(
                select(func.count(RateHitRow.id), func.min(RateHitRow.at)).where(RateHitRow.key == key)
            ).one()
            if count >= limit:
                return False, int(count), float(oldest)
            s.add(RateHitRow(key=key, at=now))
            self._rate_calls += 1
            if self._rate_calls % 1024 == 0:
                s.execute(delete(RateHitRow).where(RateHitRow.at <= now - 3600))
            return True, int(count) + 1, float(oldest if oldest is not None else now)

    def lead(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        try:
            if self._leader is not None:
                self._leader.execute(text("SELECT 1"))
                return True
        except SQLAlchemyError:
            self._drop_leadership()
        conn = self.engine.connect()
        try:
            won = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar())
            conn.commit()
        except SQLAlchemyError:
            conn.close()
            return False
        if not won:
            conn.close()
            return False
        self._leader = conn
        return True

    def _drop_leadership(self) -> None:
        if self._leader is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._leader.close()
            self._leader = None

    def close(self) -> None:
        self._drop_leadership()
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable with WAL; a commit no longer waits for an fsync
    cur.close()
