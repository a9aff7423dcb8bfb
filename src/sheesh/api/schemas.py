"""Request and response bodies of the run dat sheesh API (camelCase on the wire)."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from sheesh.models import ExecLog, FirewallAction, PortForward, Snapshot, TimeoutAction, Vm, VmKind

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_CMD_BYTES = 256 * 1024
MAX_ENV_BYTES = 256 * 1024
"""All environment names and values of one exec/run-ts/run-js together."""
MAX_ARG_BYTES = 256 * 1024
"""All run-ts/run-js arguments together."""


def _check_env_size(total: int) -> None:
    if total > MAX_ENV_BYTES:
        raise ValueError(f"env is larger than {MAX_ENV_BYTES} bytes in all")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CreateVmBody(Body):
    cpu: Annotated[StrictInt, Field(ge=1, le=8, description="vCPU count (1-8)")]
    mem_mb: Annotated[StrictInt, Field(alias="memMb", ge=128, le=8192, description="Memory in MiB (128-8192)")]
    allow_ips: Annotated[
        list[StrictStr], Field(alias="allowIps", max_length=256, description="Outbound IP allowlist (CIDR notation)")
    ]
    outbound_internet: Annotated[StrictBool, Field(alias="outboundInternet")] = False
    image_id: Annotated[StrictStr | None, Field(alias="imageId", max_length=64)] = None
    snapshot_id: Annotated[StrictStr | None, Field(alias="snapshotId", max_length=64)] = None
    disk_size_mb: Annotated[StrictInt | None, Field(alias="diskSizeMb", ge=1)] = None
    kind: Annotated[
        VmKind,
        Field(
            description="sandbox (default): microVM with exec, files and snapshots. full: VPS-style PC with "
            "BIOS, VGA (VNC console), CD-ROM; can boot ISOs and cloud-init images via the node agent"
        ),
    ] = VmKind.SANDBOX
    timeout_s: Annotated[
        StrictInt | None,
        Field(alias="timeoutS", ge=1, description="Delete (or pause, see onTimeout) the VM this many seconds from now"),
    ] = None
    on_timeout: Annotated[TimeoutAction, Field(alias="onTimeout")] = TimeoutAction.DELETE

    @field_validator("allow_ips")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a valid CIDR") from None
            if net.version != 4:
                raise ValueError(f"{item!r} is IPv6; guests have IPv4 only, so allowIps takes IPv4 CIDRs")
            out.append(str(net))
        return out


def workspace_path(path: str) -> str | None:
    """``path`` normalised if it is /workspace or below it (absolute, no escaping ``..``, no NUL byte),
    else None."""
    norm = posixpath.normpath(path)
    if "\0" not in path and path.startswith("/") and (norm == "/workspace" or norm.startswith("/workspace/")):
        return norm
    return None


def iso(dt: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z`` (``isoformat`` is C code: 4x faster than ``strftime``)."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


class FirewallRuleBody(Body):
    src: Annotated[
        StrictStr | None,
        Field(description="Source network (IPv4 CIDR); default: the address this request came from, as /32"),
    ] = None
    action: Annotated[FirewallAction, Field(description="ACCEPT, DROP or REJECT")] = FirewallAction.ACCEPT

    @field_validator("src")
    @classmethod
    def _src(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a valid CIDR") from None
        if net.version != 4:
            raise ValueError("src must be an IPv4 network")
        return str(net)


class FirewallRuleOut(BaseModel):
    src: str
    action: str


class FirewallOut(BaseModel):
    vmId: str
    rules: list[FirewallRuleOut]


class PortBody(Body):
    guest_port: Annotated[StrictInt, Field(alias="guestPort", ge=1, le=65535, description="Port inside the VM")]
    protocol: Annotated[str, Field(pattern="^(tcp|udp)$", description="tcp (default) or udp")] = "tcp"


class PortOut(BaseModel):
    guestPort: int
    hostPort: int
    protocol: str

    @classmethod
    def of(cls, port: PortForward) -> PortOut:
        return cls.model_construct(guestPort=port.guest_port, hostPort=port.host_port, protocol=port.protocol)


class VmOut(BaseModel):
    id: str
    state: str
    cpu: int
    memMb: int
    guestIp: str
    createdAt: str
    provisionMode: str
    allowIps: list[str]
    outboundInternet: bool
    imageId: str
    diskSizeMb: int
    node: str
    error: str | None = None
    snapshotId: str | None = None
    nodeHost: str | None = None
    nodePort: int | None = None
    kind: str = VmKind.SANDBOX.value
    ports: list[PortOut] = Field(default_factory=list)
    expiresAt: str | None = None
    """When the VM's timeout runs out (null: none)."""
    onTimeout: str = TimeoutAction.DELETE.value

    @classmethod
    def of(cls, vm: Vm, node_host: str | None = None, node_port: int | None = None) -> VmOut:
        """Built from the typed record without validating it again (a third of a list's cost otherwise)."""
        return cls.model_construct(
            id=vm.id,
            state=vm.state.value,
            cpu=vm.cpu,
            memMb=vm.mem_mb,
            guestIp=vm.guest_ip,
            createdAt=iso(vm.created_at),
            provisionMode=vm.provision_mode.value,
            allowIps=list(vm.allow_ips),
            outboundInternet=vm.outbound_internet,
            imageId=vm.image_id,
            diskSizeMb=vm.disk_size_mb,
            node=vm.node,
            error=vm.error,
            snapshotId=vm.user_snapshot_id,
            nodeHost=node_host,
            nodePort=node_port,
            kind=vm.kind.value,
            ports=[PortOut.of(p) for p in vm.ports],
            expiresAt=iso(vm.expires_at) if vm.expires_at else None,
            onTimeout=vm.on_timeout.value,
        )


class TimeoutBody(Body):
    timeout_s: Annotated[
        StrictInt | None, Field(alias="timeoutS", ge=1, description="Seconds from now; null: no timeout")
    ]
    on_timeout: Annotated[TimeoutAction | None, Field(alias="onTimeout", description="Unchanged if left out")] = None


class ExecBody(Body):
    cmd: Annotated[StrictStr, Field(min_length=1, description="Shell command (executed via bash -lc)")]
    cwd: Annotated[StrictStr, Field(description="Working directory under /workspace")] = "/workspace"
    env: Annotated[dict[StrictStr, StrictStr], Field(max_length=256)] = Field(default_factory=dict)
    timeout_ms: Annotated[StrictInt | None, Field(alias="timeoutMs", ge=1)] = None

    @field_validator("cmd")
    @classmethod
    def _cmd(cls, value: str) -> str:
        if len(value.encode()) > MAX_CMD_BYTES:
            raise ValueError(f"cmd is longer than {MAX_CMD_BYTES} bytes")
        if "\0" in value:
            raise ValueError("cmd contains a NUL byte")
        return value

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str) -> str:
        norm = workspace_path(value)
        if norm is None:
            raise ValueError("cwd must be /workspace or a directory under it")
        return norm

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _ENV_KEY.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if "\0" in val:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        _check_env_size(sum(len(k.encode()) + len(v.encode()) for k, v in value.items()))
        return value


class ExecStreamBody(ExecBody):
    """The first message of ``/v1/vms/:id/exec/stream``: an exec body, and a terminal if wanted."""

    pty: StrictBool = False
    rows: Annotated[StrictInt, Field(ge=1, le=1000)] = 24
    cols: Annotated[StrictInt, Field(ge=1, le=1000)] = 80


class ExecOut(BaseModel):
    exitCode: int
    stdout: str
    stderr: str
    timedOut: bool = False
    truncated: bool = False


MAX_CODE_BYTES = 1024 * 1024


class _ScriptBody(Body):
    code: Annotated[StrictStr | None, Field(description="Inline program code")] = None
    path: Annotated[StrictStr | None, Field(description="Path to a program file in /workspace")] = None
    args: Annotated[list[StrictStr], Field(max_length=256, description="Arguments passed to the program")] = Field(
        default_factory=list
    )
    env: Annotated[list[StrictStr], Field(max_length=256, description='Environment as ["KEY=value"]')] = Field(
        default_factory=list
    )
    timeout_ms: Annotated[StrictInt | None, Field(alias="timeoutMs", ge=1)] = None
    error_stack: Annotated[
        StrictBool, Field(alias="errorStack", description="Include the stack of an Error passed to result.error")
    ] = False

    SUFFIXES: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _one_source(self) -> _ScriptBody:
        if (self.code is None) == (self.path is None):
            raise ValueError("exactly one of code or path is required")
        if self.code is not None and len(self.code.encode()) > MAX_CODE_BYTES:
            raise ValueError(f"code is longer than {MAX_CODE_BYTES} bytes")
        if self.path is not None:
            norm = workspace_path(self.path)
            if norm is None or not norm.endswith(self.SUFFIXES):
                raise ValueError(f"path must be a {' or '.join(self.SUFFIXES)} file under /workspace")
        return self

    @field_validator("env")
    @classmethod
    def _env_pairs(cls, value: list[str]) -> list[str]:
        for pair in value:
            key, sep, val = pair.partition("=")
            if not sep or not _ENV_KEY.match(key) or "\0" in val:
                raise ValueError(f"env entries must be KEY=value, got {pair!r}")
        _check_env_size(sum(len(p.encode()) for p in value))
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: list[str]) -> list[str]:
        for i, arg in enumerate(value):
            if "\0" in arg:
                raise ValueError(f"args[{i}] contains a NUL byte")
        if sum(len(a.encode()) for a in value) > MAX_ARG_BYTES:
            raise ValueError(f"args are larger than {MAX_ARG_BYTES} bytes in all")
        return value


class RunTsBody(_ScriptBody):
    deno_flags: Annotated[list[StrictStr], Field(alias="denoFlags", max_length=64)] = Field(default_factory=list)

    SUFFIXES: ClassVar[tuple[str, ...]] = (".ts",)

    @field_validator("deno_flags")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        for flag in value:
            if not flag.startswith("-") or "\0" in flag:
                raise ValueError(f"denoFlags entries must be flags starting with '-', got {flag!r}")
        return value


class RunJsBody(_ScriptBody):
    SUFFIXES: ClassVar[tuple[str, ...]] = (".js", ".mjs", ".cjs")


class RunTsOut(BaseModel):
    exitCode: int
    stdout: str
    stderr: str
    result: Any = Field(default=None, description="Value passed to result.set(), when called")
    error: Any = Field(default=None, description="Error passed to result.error(), when called")
    timedOut: bool = False
    truncated: bool = False


class ExecLogOut(BaseModel):
    id: str
    type: str = Field(description="exec, run-ts or run-js")
    command: str = Field(description="The command (cut at 2 KiB), the script's path, or sha256:<digest> of its code")
    startedAt: str
    durationMs: float
    exitCode: int | None = Field(description="null when the call failed before the program ended (see error)")
    timedOut: bool
    stdoutTail: str = Field(description="The last 2 KiB of stdout")
    stderrTail: str = Field(description="The last 2 KiB of stderr")
    error: str | None = None

    @classmethod
    def of(cls, entry: ExecLog) -> ExecLogOut:
        return cls(
            id=entry.id,
            type=entry.kind.value,
            command=entry.command,
            startedAt=iso(entry.started_at),
            durationMs=entry.duration_ms,
            exitCode=entry.exit_code,
            timedOut=entry.timed_out,
            stdoutTail=entry.stdout_tail,
            stderrTail=entry.stderr_tail,
            error=entry.error,
        )


class UploadOut(BaseModel):
    files: int
    bytes: int


class LogsOut(BaseModel):
    vmId: str
    type: str
    lines: list[str]


class SnapshotOut(BaseModel):
    id: str
    vmId: str
    createdAt: str
    cpu: int
    memMb: int
    imageId: str
    diskSizeMb: int
    saveMs: float

    @classmethod
    def of(cls, snap: Snapshot) -> SnapshotOut:
        return cls(
            id=snap.id,
            vmId=snap.vm_id,
            createdAt=iso(snap.created_at),
            cpu=snap.cpu,
            memMb=snap.mem_mb,
            imageId=snap.image_id,
            diskSizeMb=snap.disk_size_mb,
            saveMs=round(snap.save_ms, 1),
        )


class ForkBody(Body):
    count: Annotated[StrictInt, Field(ge=1, le=16, description="Number of clones (1-16)")] = 1


class ForkOut(BaseModel):
    snapshotId: str
    vms: list[VmOut]
    failed: list[str] = []
    """Why clones that could not be made failed (the fork answers 201 while at least one was made)."""


class ErrorOut(BaseModel):
    message: str
