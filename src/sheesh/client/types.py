"""What the API returns, as typed records with Python names (``mem_mb`` for ``memMb``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sheesh import servertiming


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time of the API (``...Z``) as an aware datetime; None for null."""
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _time(value: object) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError(f"not a time: {value!r}")
    return parsed


@dataclass(frozen=True, kw_only=True)
class PortForward:
    guest_port: int
    host_port: int
    protocol: str


@dataclass(frozen=True, kw_only=True)
class VmInfo:
    """A VM as the API last reported it."""

    id: str
    state: str
    cpu: int
    mem_mb: int
    guest_ip: str
    created_at: datetime
    provision_mode: str
    allow_ips: list[str]
    outbound_internet: bool
    image_id: str
    disk_size_mb: int
    node: str
    kind: str
    error: str | None = None
    snapshot_id: str | None = None
    node_host: str | None = None
    node_port: int | None = None
    ports: list[PortForward] = field(default_factory=list)
    expires_at: datetime | None = None
    on_timeout: str = "delete"

    @classmethod
    def of(cls, body: dict[str, Any]) -> VmInfo:
        return cls(
            id=body["id"],
            state=body["state"],
            cpu=body["cpu"],
            mem_mb=body["memMb"],
            guest_ip=body["guestIp"],
            created_at=_time(body["createdAt"]),
            provision_mode=body.get("provisionMode", "boot"),
            allow_ips=list(body.get("allowIps", [])),
            outbound_internet=bool(body.get("outboundInternet")),
            image_id=body.get("imageId", ""),
            disk_size_mb=body.get("diskSizeMb", 0),
            node=body.get("node", ""),
            kind=body.get("kind", "sandbox"),
            error=body.get("error"),
            snapshot_id=body.get("snapshotId"),
            node_host=body.get("nodeHost"),
            node_port=body.get("nodePort"),
            ports=[
                PortForward(guest_port=p["guestPort"], host_port=p["hostPort"], protocol=p["protocol"])
                for p in body.get("ports", [])
            ],
            expires_at=parse_time(body.get("expiresAt")),
            on_timeout=body.get("onTimeout", "delete"),
        )


def _timing(headers: Mapping[str, str] | None) -> dict[str, float]:
    value = headers.get(servertiming.HEADER) if headers is not None else None
    return servertiming.durations(value) if value else {}


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    """The outcome of ``exec``, ``run_ts``, ``run_js`` (text) or a streamed command (``exec_stream``)."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    truncated: bool = False
    timing: dict[str, float] = field(default_factory=dict)
    """Where the call's time went on the server, in ms, as its ``Server-Timing`` header says: ``exec`` (the
    control plane), ``node`` (the node's call to the guest agent), ``guest`` (the agent's own part, the program's
    run included); empty when the server does not say."""

    @property
    def ok(self) -> bool:
        """Exit code 0 and no timeout."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def of(cls, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> ExecResult:
        return cls(
            exit_code=body["exitCode"],
            stdout=body.get("stdout", ""),
            stderr=body.get("stderr", ""),
            timed_out=bool(body.get("timedOut")),
            truncated=bool(body.get("truncated")),
            timing=_timing(headers),
        )


@dataclass(frozen=True, kw_only=True)
class ScriptResult(ExecResult):
    """``run_ts``/``run_js``: ``result`` is what the program passed to ``result.set()`` (``has_result`` tells a
    ``null`` result from none), ``error`` what it passed to ``result.error()``."""

    result: Any = None
    has_result: bool = False
    error: Any = None

    @classmethod
    def of(cls, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> ScriptResult:
        base = ExecResult.of(body, headers)
        return cls(
            exit_code=base.exit_code,
            stdout=base.stdout,
            stderr=base.stderr,
            timed_out=base.timed_out,
            truncated=base.truncated,
            timing=base.timing,
            result=body.get("result"),
            has_result="result" in body,
            error=body.get("error"),
        )


@dataclass(frozen=True, kw_only=True)
class StreamResult:
    """How a streamed command ended (its output went to the callbacks)."""

    exit_code: int
    timed_out: bool = False
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    id: str
    vm_id: str
    created_at: datetime
    cpu: int
    mem_mb: int
    image_id: str
    disk_size_mb: int
    save_ms: float

    @classmethod
    def of(cls, body: dict[str, Any]) -> Snapshot:
        return cls(
            id=body["id"],
            vm_id=body["vmId"],
            created_at=_time(body["createdAt"]),
            cpu=body["cpu"],
            mem_mb=body["memMb"],
            image_id=body["imageId"],
            disk_size_mb=body["diskSizeMb"],
            save_ms=body.get("saveMs", 0.0),
        )


@dataclass(frozen=True, kw_only=True)
class Image:
    id: str
    name: str
    description: str
    is_default: bool
    ready: bool
    rootfs_size_mb: int
    created_at: datetime

    @classmethod
    def of(cls, body: dict[str, Any]) -> Image:
        return cls(
            id=body["id"],
            name=body["name"],
            description=body.get("description", ""),
            is_default=bool(body.get("isDefault")),
            ready=bool(body.get("ready")),
            rootfs_size_mb=body.get("rootfsSizeMb", 0),
            created_at=_time(body["createdAt"]),
        )


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """``key`` is set only in the answer to ``create`` (the server keeps a hash)."""

    id: str
    label: str
    created_at: datetime
    sha256: str
    expires_at: datetime | None = None
    key: str | None = None

    @classmethod
    def of(cls, body: dict[str, Any]) -> ApiKey:
        return cls(
            id=body["id"],
            label=body["label"],
            created_at=_time(body["createdAt"]),
            sha256=body["sha256"],
            expires_at=parse_time(body.get("expiresAt")),
            key=body.get("key"),
        )


@dataclass(frozen=True, kw_only=True)
class User:
    id: str
    username: str
    role: str
    created_at: datetime
    totp_enabled: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> User:
        return cls(
            id=body["id"],
            username=body["username"],
            role=body["role"],
            created_at=_time(body["createdAt"]),
            totp_enabled=bool(body.get("totpEnabled")),
        )


@dataclass(frozen=True, kw_only=True)
class ExecLog:
    id: str
    type: str
    command: str
    started_at: datetime
    duration_ms: float
    exit_code: int | None
    timed_out: bool
    stdout_tail: str
    stderr_tail: str
    error: str | None = None

    @classmethod
    def of(cls, body: dict[str, Any]) -> ExecLog:
        return cls(
            id=body["id"],
            type=body["type"],
            command=body["command"],
            started_at=_time(body["startedAt"]),
            duration_ms=body["durationMs"],
            exit_code=body.get("exitCode"),
            timed_out=bool(body.get("timedOut")),
            stdout_tail=body.get("stdoutTail", ""),
            stderr_tail=body.get("stderrTail", ""),
            error=body.get("error"),
        )
