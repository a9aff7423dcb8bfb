"""Records of the rerobots surface (seed 001), no internal imports: workspace types, deployments, instances,
reservations, VPN clients and CI projects and jobs.

A *workspace type* is a named VM preset; a *deployment* is one slot of a type, used by one instance at a
time; an *instance* is a sheesh VM made from the type on that slot, reached over SSH as root; a
*reservation* waits, first come first served, for a matching deployment to become free.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(kw_only=True)
class WorkspaceType:
    """A named preset (``id`` is its name, e.g. ``basic_vm``)."""

    id: str
    cpu: int
    mem_mb: int
    image_id: str | None = None
    """None: the default image."""
    disk_size_mb: int | None = None
    vpn: bool = True
    """Whether instances of this type may have a VPN."""
    outbound_internet: bool = True
    """Whether instances reach the internet (sheesh VMs' ``outboundInternet``)."""
    created_at: datetime


@dataclass(kw_only=True)
class Deployment:
    id: str
    type: str
    region: str
    node: str
    created_at: datetime
    icounter: int = 0
    """Completed instantiations (instances that ended)."""


class InstanceStatus(enum.StrEnum):
    INIT = "INIT"
    READY = "READY"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


ACTIVE_INSTANCE = frozenset({InstanceStatus.INIT, InstanceStatus.READY, InstanceStatus.TERMINATING})
"""An instance in one of these states occupies its deployment."""


class VpnStatus(enum.StrEnum):
    NIL = "nil"
    PREPARING = "preparing"
    READY = "ready"


@dataclass(kw_only=True)
class Instance:
    id: str
    owner_id: str | None
    deployment: str
    type: str
    region: str
    status: InstanceStatus
    created_at: datetime
    """Start time (``starttime``)."""
    public_key: str
    vm_id: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    hostkeys: list[str] = field(default_factory=list)
    ended_at: datetime | None = None
    vpn: VpnStatus = VpnStatus.NIL
    vpn_port: int | None = None
    vpn_network: str | None = None
    """The VPN's client addresses (a /24 of ``Settings.vpn_network``)."""
    error: str | None = None
    """Why the instance ended without being terminated by its user (it could not be made ready)."""
    reservation: str | None = None
    """The reservation this instance serves, if it was made from one."""
    eurl: str | None = None
    """Where to POST the event when the instance from a reservation is ready."""
    expires_at: datetime | None = None
    """When the instance is terminated by itself (``expire_d`` of its request)."""


@dataclass(kw_only=True)
class Reservation:
    """A request for an instance of ``type`` (any deployment of it) or of one ``deployment``."""

    id: str
    owner_id: str | None
    created_at: datetime
    type: str | None = None
    deployment: str | None = None
    public_key: str
    vpn: bool = False
    eurl: str | None = None
    duration_s: int | None = None

    @property
    def desc(self) -> str:
        return f"deployment {self.deployment}" if self.deployment else f"type {self.type}"


@dataclass(kw_only=True)
class VpnClient:
    id: str
    instance_id: str
    owner_id: str | None
    created_at: datetime


@dataclass(kw_only=True)
class CiProject:
    id: str
    owner_id: str | None
    created_at: datetime
    repo_url: str
    repo_type: str = "git"
    ns: str | None = None
    branch: str | None = None
    commit: str | None = None
    type: str
    """The workspace type jobs run on."""


class CiJobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    """Could not run (clone failed, no VM); ``failed`` means the commands ran and one exited non-zero."""


CI_DONE = frozenset({CiJobStatus.PASSED, CiJobStatus.FAILED, CiJobStatus.ERROR})


@dataclass(kw_only=True)
class CiJob:
    id: str
    project_id: str
    owner_id: str | None
    created_at: datetime
    status: CiJobStatus = CiJobStatus.QUEUED
    branch: str | None = None
    ref: str | None = None
    log: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
