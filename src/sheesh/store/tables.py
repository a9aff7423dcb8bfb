"""SQLAlchemy table definitions (schema changes go through an alembic migration)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class VmRow(Base):
    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    cpu: Mapped[int] = mapped_column(Integer)
    mem_mb: Mapped[int] = mapped_column(Integer)
    allow_ips: Mapped[list[Any]] = mapped_column(JSON)
    outbound_internet: Mapped[bool] = mapped_column(Boolean)
    image_id: Mapped[str] = mapped_column(String(64))
    disk_size_mb: Mapped[int] = mapped_column(Integer)
    guest_ip: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    provision_mode: Mapped[str] = mapped_column(String(16))
    node: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="sandbox")
    firewall: Mapped[list[Any]] = mapped_column(JSON, default=list)
    ports: Mapped[list[Any]] = mapped_column(JSON, default=list)
    vpn_network: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    on_timeout: Mapped[str] = mapped_column(String(16), default="delete")
    auto_paused: Mapped[bool] = mapped_column(Boolean, default=False)


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    rootfs_size_mb: Mapped[int] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SnapshotRow(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cpu: Mapped[int] = mapped_column(Integer)
    mem_mb: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(String(64))
    disk_size_mb: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    save_ms: Mapped[float] = mapped_column(Float)
    owner_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node: Mapped[str] = mapped_column(String(64), default="local")


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean)
    failed_logins: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ExecLogRow(Base):
    __tablename__ = "exec_logs"
    __table_args__ = (Index("ix_exec_logs_vm_started", "vm_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    command: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timed_out: Mapped[bool] = mapped_column(Boolean)
    stdout_tail: Mapped[str] = mapped_column(Text)
    stderr_tail: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RecordColumns:
    """A record of the rerobots surface: the columns it is looked up by, and the whole record as JSON
    (``sheesh.wire``), so its fields can grow without a migration for each."""

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)


class WorkspaceTypeRow(RecordColumns, Base):
    __tablename__ = "workspace_types"


class DeploymentRow(RecordColumns, Base):
    __tablename__ = "deployments"


class InstanceRow(RecordColumns, Base):
    __tablename__ = "instances"


class ReservationRow(RecordColumns, Base):
    __tablename__ = "reservations"


class VpnClientRow(RecordColumns, Base):
    __tablename__ = "vpn_clients"


class CiProjectRow(RecordColumns, Base):
    __tablename__ = "ci_projects"


class CiJobRow(RecordColumns, Base):
    __tablename__ = "ci_jobs"


class NodeRow(RecordColumns, Base):
    __tablename__ = "nodes"


class ChangeCounterRow(Base):
    """How many times a table was written (``name``: the table): caches of any replica compare it with the
    value they were filled at. Moved in the same transaction as the write."""

    __tablename__ = "change_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class RateHitRow(Base):
    """One counted request of a rate limit shared by replicas (``key``: bucket and identity; ``at``: epoch s)."""

    __tablename__ = "rate_hits"
    __table_args__ = (Index("ix_rate_hits_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255))
    at: Mapped[float] = mapped_column(Float)


RECORD_TABLES = (
    WorkspaceTypeRow,
    DeploymentRow,
    InstanceRow,
    ReservationRow,
    VpnClientRow,
    CiProjectRow,
    CiJobRow,
    NodeRow,
)
