"""The node contract: every type that crosses the control plane <-> node seam, and the ``NodeClient`` protocol.

This module is the whole of what the control plane knows about nodes (import-linter keeps it so). Its types are
kw-only frozen dataclasses of JSON-friendly fields; ``to_wire`` turns any of them into plain JSON data and
``from_wire`` back (``sheesh.wire``), so a node on another host can speak exactly this over HTTP. Messages that
stand alone carry ``version`` (``CONTRACT_VERSION``): a peer refuses a version it does not know (``WireError``).

The embedded local node (``sheesh.node.agent.NodeAgent``) takes these objects in-process; the exec and script
records (``ExecRequest``, ``ScriptResult``, ...) are shared with the API and live in ``sheesh.models``, and
cross the seam through the same codec.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sheesh.errors import (
    ConflictError,
    ForbiddenError,
    GuestTimeoutError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    SheeshError,
    UnavailableError,
)
from sheesh.execstream import ExecStream, StreamRequest
from sheesh.models import (
    ExecRequest,
    ExecResult,
    FirewallRule,
    GuestTiming,
    PortForward,
    ScriptRequest,
    ScriptResult,
    VmKind,
)
from sheesh.node.errors import MediaError, NodeError
from sheesh.wire import WIRE_VERSION, WireError, from_wire, to_wire

__all__ = [
    "CONTRACT_OPS",
    "CONTRACT_PREFIX",
    "CONTRACT_TYPES",
    "CONTRACT_VERSION",
    "ERROR_CLASSES",
    "ExecRequest",
    "ExecResult",
    "ExecStream",
    "GuestTiming",
    "NodeCapacity",
    "NodeClient",
    "NodeStatus",
    "NodeVmSpec",
    "Op",
    "ScriptRequest",
    "ScriptResult",
    "SnapshotInfo",
    "StreamRequest",
    "VmNet",
    "VpnSpec",
    "WireError",
    "agent_token_key",
    "error_class",
    "error_name",
    "from_wire",
    "to_wire",
]
CONTRACT_VERSION = WIRE_VERSION


@dataclass(frozen=True, kw_only=True)
class VmNet:
    """One VM's network identity and traffic policy."""

    vm_id: str
    ip: str
    allow_ips: tuple[str, ...] = ()
    outbound_internet: bool = False
    firewall: tuple[FirewallRule, ...] = ()
    ports: tuple[PortForward, ...] = ()
    vpn_network: str | None = None
    """Clients of the VM's VPN (``vpn_tun``) have these addresses: they reach the VM whatever its firewall
    says, and nothing else."""

    @property
    def tap(self) -> str:
        """Interface name (at most 15 characters)."""
        return "sh" + hashlib.sha256(self.vm_id.encode()).hexdigest()[:12]

    @property
    def vpn_tun(self) -> str:
        """The VM's VPN server interface (at most 15 characters)."""
        return "sv" + hashlib.sha256(self.vm_id.encode()).hexdigest()[:12]

    @property
    def mac(self) -> str:
        """Locally administered MAC made of the IPv4 address (unique while the address is)."""
        octets = ipaddress.IPv4Address(self.ip).packed
        return "52:54:" + ":".join(f"{b:02x}" for b in octets)


@dataclass(frozen=True, kw_only=True)
class NodeVmSpec:
    """What a node needs to run a VM: shape, image files and disk size; ``snapshot_id`` (with the disk size it
    was taken at) makes ``create`` restore that snapshot instead of booting."""

    version: int = CONTRACT_VERSION
    vm_id: str
    cpu: int
    mem_mb: int
    kernel: Path
    initrd: Path
    rootfs: Path
    disk_size_mb: int
    snapshot_id: str | None = None
    snapshot_disk_mb: int | None = None
    kind: VmKind = VmKind.SANDBOX
    net: VmNet | None = None
    """Address and traffic policy (used when the node has networking)."""


@dataclass(frozen=True, kw_only=True)
class VpnSpec:
    """An OpenVPN server for one VM: UDP ``port`` on the node, clients get addresses of ``network`` (a /24,
    the server takes its first) and one route, to the VM's ``guest_ip``. Certificates are PEM; clients must
    hold a certificate of ``ca_pem``."""

    version: int = CONTRACT_VERSION
    vm_id: str
    port: int
    network: str
    guest_ip: str
    ca_pem: str
    cert_pem: str
    key_pem: str


@dataclass(frozen=True, kw_only=True)
class SnapshotInfo:
    """A snapshot a node saved."""

    snapshot_id: str
    save_ms: float


@dataclass(frozen=True, kw_only=True)
class VmUsage:
    """What a VM's machine has used on its node: CPU seconds since it started (user + system), its memory
    (PSS, MiB), and when the node read them (epoch seconds: two readings give a CPU share)."""

    cpu_s: float
    mem_mb: float
    at_s: float


@dataclass(frozen=True, kw_only=True)
class NodeCapacity:
    """What a node has to give: vCPUs, memory and disk (in MiB), and how much disk is free."""

    vcpus: int
    mem_mb: int
    disk_mb: int
    disk_free_mb: int


@dataclass(frozen=True, kw_only=True)
class NodeStatus:
    """A node's report of itself."""

    version: int = CONTRACT_VERSION
    name: str
    capacity: NodeCapacity
    running: tuple[str, ...] = ()
    """Ids of the VMs whose machines run."""


CONTRACT_TYPES: tuple[type[Any], ...] = (
    VmNet,
    NodeVmSpec,
    VpnSpec,
    SnapshotInfo,
    VmUsage,
    NodeCapacity,
    NodeStatus,
    FirewallRule,
    PortForward,
    ExecRequest,
    ExecResult,
    GuestTiming,
    ScriptRequest,
    ScriptResult,
    StreamRequest,
)
"""Every record that crosses the seam (the wire tests round-trip each of them)."""


@dataclass(frozen=True, kw_only=True)
class Op:
    """One ``NodeClient`` operation as it crosses HTTP (``POST /node/v1/<name>``, the arguments as a JSON
    object of their wire forms, the answer ``{"result": ...}``): argument and result types, whether a retry
    after a lost connection is harmless, and whether it may last as long as the guest work it asks for."""

    args: dict[str, Any]
    result: Any = None
    idempotent: bool = False
    long: bool = False


_VM = {"vm_id": str}
CONTRACT_OPS: dict[str, Op] = {
    "create": Op(args={"spec": NodeVmSpec}, long=True),
    "start": Op(args={"spec": NodeVmSpec}, long=True),
    "stop": Op(args=_VM, long=True),
    "destroy": Op(args=_VM, idempotent=True, long=True),
    "is_running": Op(args=_VM, result=bool, idempotent=True),
    "exit_reason": Op(args=_VM, result=str | None, idempotent=True),
    "local_vms": Op(args={}, result=list[str], idempotent=True),
    "ensure_network": Op(args={}, result=bool, idempotent=True),
    "reattach": Op(args={"vm_ids": list[str]}, result=list[str], idempotent=True, long=True),
    "exec": Op(args={**_VM, "req": ExecRequest, "output_limit": int}, result=ExecResult, long=True),
    "snapshot": Op(args={**_VM, "snapshot_id": str, "sync_guest": bool}, result=SnapshotInfo, long=True),
    "delete_snapshot": Op(args={"snapshot_id": str}, idempotent=True),
    "keep_spares": Op(args={"spec": NodeVmSpec}, idempotent=True),
    "pause": Op(args=_VM),
    "resume": Op(args=_VM),
    "ping": Op(args=_VM, result=dict[str, Any], idempotent=True),
    "run_script": Op(
        args={**_VM, "req": ScriptRequest, "allow_net": bool | list[str], "output_limit": int},
        result=ScriptResult,
        long=True,
    ),
    "authorize_ssh": Op(args={**_VM, "public_keys": list[str]}, result=list[str], long=True),
    "start_vpn": Op(args={"spec": VpnSpec}, long=True),
    "stop_vpn": Op(args=_VM, idempotent=True),
    "update_network": Op(args={**_VM, "net": VmNet}, idempotent=True),
    "eject_cdrom": Op(args=_VM, idempotent=True),
    "log_tail": Op(args={**_VM, "kind": str, "lines": int}, result=list[str], idempotent=True),
    "usage": Op(args=_VM, result=VmUsage | None, idempotent=True),
    "status": Op(args={}, result=NodeStatus, idempotent=True),
}
"""Every operation of ``NodeClient`` but the streams (``upload``: ``PUT /node/v1/upload``, ``download``:
``GET /node/v1/download``, ``exec_stream``: the WebSocket ``/node/v1/exec_stream``, in the message format of
``sheesh.execstream``) and ``close``; the HTTP server and the remote client are both driven by it."""
CONTRACT_PREFIX = "/node/v1"

ERROR_CLASSES: dict[str, type[SheeshError]] = {
    cls.__name__: cls
    for cls in (
        InvalidInputError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        RateLimitedError,
        NodeError,
        MediaError,
        UnavailableError,
        GuestTimeoutError,
    )
}
"""The errors that cross the seam by name (any other ``SheeshError`` crosses as its nearest listed base)."""


def agent_token_key(node_token: str) -> bytes:
    """The key a remote node checks agent tokens (``/serial``, ``/vnc``, ...) with: derived from its secret,
    so the control plane can sign tokens for it and nobody else can."""
    return hmac.new(node_token.encode(), b"sheesh agent tokens", hashlib.sha256).digest()


def error_name(exc: SheeshError) -> str:
    """The name ``exc`` crosses the seam by: its class or nearest base in ``ERROR_CLASSES`` (else NodeError)."""
    return next((c.__name__ for c in type(exc).__mro__ if c.__name__ in ERROR_CLASSES), NodeError.__name__)


def error_class(name: str) -> type[SheeshError]:
    """The class a node's error answer names (``NodeError`` for names this side does not know)."""
    return ERROR_CLASSES.get(name, NodeError)


class NodeClient(Protocol):
    """Operations on one node. Failures raise ``SheeshError`` subclasses with user-safe messages."""

    name: str

    async def create(self, spec: NodeVmSpec) -> None:
        """Create the VM's disk and boot it (or restore ``spec.snapshot_id``); return once its agent answers."""
        ...

    async def start(self, spec: NodeVmSpec) -> None:
        """Boot a stopped VM from its existing disk."""
        ...

    async def stop(self, vm_id: str) -> None:
        """Graceful (ACPI) shutdown, forced after the node's stop timeout."""
        ...

    async def destroy(self, vm_id: str) -> None:
        """Kill the VM and delete its storage. Idempotent."""
        ...

    async def is_running(self, vm_id: str) -> bool: ...

    async def exit_reason(self, vm_id: str) -> str | None:
        """Why the VM's machine ended without being asked to (None: a clean power-off, or not known)."""
        ...

    async def local_vms(self) -> list[str]:
        """Ids of all VM folders the node holds (to find leftovers without a record)."""
        ...

    async def ensure_network(self) -> bool:
        """Restore the node's network rules if they were removed outside sheesh; True if it had to."""
        ...

    async def reattach(self, vm_ids: Sequence[str]) -> set[str]:
        """Adopt still-running VMs after a control-plane restart (all at once, so their network rules are
        restored in one step); returns the ids of those alive."""
        ...

    async def exec(self, vm_id: str, req: ExecRequest, output_limit: int) -> ExecResult: ...

    async def exec_stream(self, vm_id: str, req: StreamRequest, output_limit: int | None) -> ExecStream:
        """Start ``req`` and return it running (output, stdin, signals, resize: ``ExecStream``); each of its
        output streams is capped at ``output_limit`` bytes (None: not capped; a terminal never is).

        :raise UnavailableError: the VM does not run or its guest cannot be reached
        :raise InvalidInputError: the guest refused the command (working directory, environment, size)
        """
        ...

    async def snapshot(self, vm_id: str, snapshot_id: str, sync_guest: bool = True) -> SnapshotInfo:
        """Save the running (or paused) VM under ``snapshot_id``, first flushing the guest's file systems when
        ``sync_guest`` (a paused guest cannot answer)."""
        ...

    async def delete_snapshot(self, snapshot_id: str) -> None: ...

    async def keep_spares(self, spec: NodeVmSpec) -> None:
        """Creates like ``spec`` (from its ``snapshot_id``: a template just built) are to come: make the node's
        warm spares of them now rather than after the first such create (nothing where spares are off)."""
        ...

    async def pause(self, vm_id: str) -> None: ...

    async def resume(self, vm_id: str) -> None: ...

    async def ping(self, vm_id: str) -> dict[str, Any]:
        """The guest agent's ping reply (``warm``: pre-started shells ready)."""
        ...

    async def run_script(
        self, vm_id: str, req: ScriptRequest, allow_net: bool | list[str], output_limit: int
    ) -> ScriptResult:
        """run-ts (Deno) or run-js (Node.js) as ``req.language`` says."""
        ...

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes], max_expanded: int) -> dict[str, int]:
        """Stream a tar.gz into ``dest``; nothing is written unless the whole archive is valid."""
        ...

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        """Validate ``path`` and return the tar.gz byte stream of it."""
        ...

    async def authorize_ssh(self, vm_id: str, public_keys: Sequence[str]) -> list[str]:
        """Make ``public_keys`` root's authorized keys in the VM (its SSH server listens on port 22) and return
        the VM's SSH host public keys (its own: made at boot and again after every restore)."""
        ...

    async def start_vpn(self, spec: VpnSpec) -> None:
        """Run (or restart with this spec) the VM's OpenVPN server; UnavailableError without VM networking."""
        ...

    async def stop_vpn(self, vm_id: str) -> None:
        """Stop the VM's OpenVPN server, if any (also done when the VM is destroyed)."""
        ...

    async def update_network(self, vm_id: str, net: VmNet) -> None:
        """Replace the VM's traffic policy (allowlist, firewall, port forwards); live if its tap is up."""
        ...

    async def eject_cdrom(self, vm_id: str) -> None:
        """Take the ISO out of a full VM's CD-ROM drive (live if it runs). Idempotent."""
        ...

    async def log_tail(self, vm_id: str, kind: str, lines: int) -> list[str]:
        """Last lines of the VM's ``serial``, ``stdout`` or ``stderr`` log."""
        ...

    async def usage(self, vm_id: str) -> VmUsage | None:
        """CPU and memory of the VM's machine; None if it does not run."""
        ...

    async def status(self) -> NodeStatus:
        """The node's name, capacity and running VMs."""
        ...

    async def close(self) -> None: ...
