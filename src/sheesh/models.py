"""Domain models shared by the control plane, the node agent and the clients (no internal imports)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class VmState(enum.StrEnum):
    """Lifecycle of a VM. Allowed transitions are listed in ``TRANSITIONS``."""

    CREATING = "CREATING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    PAUSED = "PAUSED"
    ERROR = "ERROR"
    DELETING = "DELETING"
    UNREACHABLE = "UNREACHABLE"
    """Its node stopped reporting: the VM may still run; it comes back RUNNING (or STOPPED) with the node."""


TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    VmState.CREATING: frozenset({VmState.RUNNING, VmState.ERROR, VmState.DELETING}),
    VmState.RUNNING: frozenset(
        {VmState.STOPPING, VmState.STOPPED, VmState.PAUSED, VmState.ERROR, VmState.DELETING, VmState.UNREACHABLE}
    ),
    VmState.PAUSED: frozenset(
        {VmState.RUNNING, VmState.STOPPING, VmState.STOPPED, VmState.ERROR, VmState.DELETING, VmState.UNREACHABLE}
    ),
    VmState.UNREACHABLE: frozenset({VmState.RUNNING, VmState.STOPPED, VmState.DELETING}),
    VmState.STOPPING: frozenset({VmState.STOPPED, VmState.ERROR, VmState.DELETING}),
    VmState.STOPPED: frozenset({VmState.STARTING, VmState.DELETING}),
    VmState.STARTING: frozenset({VmState.RUNNING, VmState.STOPPED, VmState.ERROR, VmState.DELETING}),
    VmState.ERROR: frozenset({VmState.STARTING, VmState.STOPPED, VmState.DELETING}),
    VmState.DELETING: frozenset({VmState.ERROR}),
}


LIVE_STATES = frozenset(
    {VmState.RUNNING, VmState.PAUSED, VmState.STARTING, VmState.CREATING, VmState.STOPPING, VmState.UNREACHABLE}
)
"""VMs in these states hold their node's vCPUs and memory."""


def can_transition(src: VmState, dst: VmState) -> bool:
    """Whether the lifecycle allows moving from ``src`` to ``dst``."""
    return dst in TRANSITIONS[src]


class VmKind(enum.StrEnum):
    """``sandbox``: a microVM with the guest agent (exec, files, snapshots). ``full``: a VPS-style PC (BIOS,
    VGA on VNC, CD-ROM) that can boot ISOs and cloud images; the agent only while it runs the sheesh image."""

    SANDBOX = "sandbox"
    FULL = "full"


class FirewallAction(enum.StrEnum):
    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"


@dataclass(frozen=True)
class FirewallRule:
    """Inbound rule of a VM: traffic from ``src`` (CIDR) gets ``action``; the first match wins, default drop."""

    src: str
    action: FirewallAction


@dataclass(frozen=True)
class PortForward:
    """Traffic to ``host_port`` on the node goes to ``guest_port`` of the VM."""

    guest_port: int
    host_port: int
    protocol: str = "tcp"


class ProvisionMode(enum.StrEnum):
    BOOT = "boot"
    SNAPSHOT = "snapshot"


class TimeoutAction(enum.StrEnum):
    """What happens to a VM whose timeout runs out."""

    DELETE = "delete"
    PAUSE = "pause"


@dataclass(kw_only=True)
class Vm:
    """A VM as the control plane records it."""

    id: str
    state: VmState
    cpu: int
    mem_mb: int
    allow_ips: list[str]
    outbound_internet: bool
    image_id: str
    disk_size_mb: int
    guest_ip: str
    created_at: datetime
    provision_mode: ProvisionMode = ProvisionMode.BOOT
    node: str = "local"
    error: str | None = None
    snapshot_id: str | None = None
    """The snapshot this VM was restored from (its disk and RAM build on it): a user's or a template."""
    owner_id: str | None = None
    kind: VmKind = VmKind.SANDBOX
    firewall: list[FirewallRule] = field(default_factory=list)
    ports: list[PortForward] = field(default_factory=list)
    vpn_network: str | None = None
    """Addresses of the clients of the VM's VPN (rerobots instances), which reach the VM past its firewall."""
    expires_at: datetime | None = None
    """When the VM's timeout runs out (``timeoutS``): it is then deleted or paused (``on_timeout``)."""
    on_timeout: TimeoutAction = TimeoutAction.DELETE
    auto_paused: bool = False
    """PAUSED by auto-pause (``SHEESH_AUTO_PAUSE_S``), not by its user: the next request that needs the guest
    resumes it."""

    @property
    def user_snapshot_id(self) -> str | None:
        """The user's snapshot this VM was restored from; None for boots and template restores (internal)."""
        if self.snapshot_id is None or self.snapshot_id.startswith(TEMPLATE_SNAPSHOT_PREFIX):
            return None
        return self.snapshot_id


TEMPLATE_SNAPSHOT_PREFIX = "snap-tpl-"
"""Every template snapshot's id starts with this; template ids never leave the control plane."""


class SnapshotKind(enum.StrEnum):
    USER = "user"
    TEMPLATE = "template"


@dataclass(kw_only=True)
class Snapshot:
    """Saved machine (memory, device state, disk) of a VM; restorable into new VMs of the same shape."""

    id: str
    vm_id: str
    created_at: datetime
    cpu: int
    mem_mb: int
    image_id: str
    disk_size_mb: int
    kind: SnapshotKind = SnapshotKind.USER
    save_ms: float = 0.0
    owner_id: str | None = None
    node: str = "local"
    """The node holding its files (restores go there)."""


@dataclass(frozen=True)
class ExecRequest:
    """A shell command for the guest agent: ``bash -lc cmd`` as uid/gid 1000."""

    cmd: str
    cwd: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    timeout_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class GuestTiming:
    """Where a program run's time went, as its node saw it: ``node_ms`` from the node's request to the guest
    agent to the agent's reply; ``guest_ms``, of that, the agent's own, from the request it read to its reply
    (None: an agent that does not say). The rest is the channel between them."""

    node_ms: float
    guest_ms: float | None = None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    timing: GuestTiming | None = None


class ScriptLanguage(enum.StrEnum):
    """``ts``: TypeScript on Deno (run-ts); ``js``: JavaScript on Node.js (run-js)."""

    TS = "ts"
    JS = "js"


@dataclass(frozen=True, kw_only=True)
class ScriptRequest:
    """A program for Deno or Node.js: inline ``code`` or a ``path`` under /workspace (exactly one)."""

    language: ScriptLanguage = ScriptLanguage.TS
    code: str | None = None
    path: str | None = None
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    deno_flags: list[str] = field(default_factory=list)
    timeout_ms: int | None = None
    error_stack: bool = False
    """Include ``stack`` when an ``Error`` instance becomes the result's ``error``."""


@dataclass(frozen=True)
class ScriptResult:
    exit_code: int
    stdout: str
    stderr: str
    result: object = None
    has_result: bool = False
    error: object = None
    timed_out: bool = False
    truncated: bool = False
    timing: GuestTiming | None = None


class ExecKind(enum.StrEnum):
    """What ran: a shell command, TypeScript on Deno or JavaScript on Node.js (the API's endpoint names)."""

    EXEC = "exec"
    RUN_TS = "run-ts"
    RUN_JS = "run-js"


@dataclass(frozen=True, kw_only=True)
class ExecLog:
    """One entry of a VM's execution history."""

    id: str
    vm_id: str
    kind: ExecKind
    command: str
    """The shell command (cut at 2 KiB), the script's path, or ``sha256:<digest>`` of inline code."""
    started_at: datetime
    duration_ms: float
    exit_code: int | None
    """None when the call failed before the program ended (``error`` says why)."""
    timed_out: bool = False
    stdout_tail: str = ""
    stderr_tail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Image:
    """A guest image: kernel + initrd + ext4 rootfs on the node."""

    id: str
    name: str
    description: str
    rootfs_size_mb: int
    is_default: bool
    created_at: datetime


class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"


@dataclass(kw_only=True)
class User:
    id: str
    username: str
    password_hash: str
    role: Role
    created_at: datetime
    totp_secret: str | None = None
    totp_enabled: bool = False
    failed_logins: int = 0
    locked_until: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """An API key record; the key itself is only ever shown once, at creation."""

    id: str
    user_id: str
    label: str
    key_hash: str
    created_at: datetime
    expires_at: datetime | None = None


class NodeState(enum.StrEnum):
    """``READY`` nodes take new VMs; ``DRAINING`` ones keep theirs but take no new ones."""

    READY = "READY"
    DRAINING = "DRAINING"
    UNREACHABLE = "UNREACHABLE"


@dataclass(kw_only=True)
class NodeRecord:
    """A node as the control plane records it (``id`` is its name): where it listens (``address``:``port``,
    users' consoles at ``public_host``), the admin's ``state`` (READY or DRAINING), whether it reports
    (``reachable``), its secret ``token`` (remote nodes; the control plane signs their agent tokens with it)
    and the capacity it last reported."""

    id: str
    region: str
    address: str
    state: NodeState
    created_at: datetime
    last_heartbeat: datetime | None = None
    port: int = 1337
    public_host: str | None = None
    tls: bool = False
    token: str = ""
    reachable: bool = True
    vcpus: int = 0
    mem_mb: int = 0
    disk_mb: int = 0
    disk_free_mb: int = 0
    running: list[str] = field(default_factory=list)
    """Ids of the VMs running there, as of the last heartbeat (remote nodes)."""
