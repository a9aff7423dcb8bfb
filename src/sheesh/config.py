"""Runtime configuration from environment variables prefixed ``SHEESH_`` (no internal imports)."""

from __future__ import annotations

import hashlib
import os
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, IPvAnyNetwork
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    """``/var/lib/sheesh`` for root (the normal case: VMs need root), else ``~/.local/share/sheesh``."""
    if os.geteuid() == 0:
        return Path("/var/lib/sheesh")
    return Path.home() / ".local" / "share" / "sheesh"


class Settings(BaseSettings):
    """All knobs of a sheesh process. Paths derived from ``data_dir`` unless set explicitly."""

    model_config = SettingsConfigDict(env_prefix="SHEESH_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 3000
    api_key: str | None = None
    instance_secret: str | None = None
    signature_ttl_s: float = 15 * 60
    cookie_ttl_s: float = 12 * 3600
    login_max_failures: int = 5
    login_lockout_s: float = 30.0
    global_rate_limit: int = 100
    """Requests per minute per token (or per client address when unauthenticated), every endpoint."""
    """Password of the ``admin`` user (base64, as in karma.run); generated and shown once when unset."""
    node_name: str = "local"
    node_port: int = 1337
    """Port of the node agent's WebSocket endpoints (/serial, ...)."""
    node_public_host: str | None = None
    """Host name clients use to reach the node (default: the listen address)."""
    agent_token_ttl_s: float = 60.0
    tls: Literal["off", "self-signed"] = "off"
    """``self-signed``: serve the API and the node port over TLS with a certificate made on the first start."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    """A certificate (chain) and key in PEM: the API and the node port are served over TLS with them."""
    tls_hostnames: list[str] = Field(default_factory=list)
    """Names and addresses the self-signed certificate is for (default: the node host, localhost, 127.0.0.1)."""
    node_region: str = "local"
    """The node's region label (rerobots deployments and instances show it)."""
    default_deployments: int = 3
    """Deployments of the ``basic_vm`` workspace type made on the first start (rerobots surface)."""
    vpn_port_range: tuple[int, int] = (1194, 1293)
    """UDP ports of the per-instance OpenVPN servers."""
    vpn_network: str = "10.200.0.0/16"
    """Addresses of VPN clients: one /24 per instance VPN."""
    ci_job_timeout_s: float = 1800.0
    """Longest a CI job's commands may run together (a job's ``timeout`` can only be shorter)."""
    ci_max_parallel_jobs: int = 2
    ci_local_repo_roots: list[Path] = Field(default_factory=list)
    """Folders on the control plane's host whose git repositories CI projects may use as ``file://`` URLs."""

    vmm: Literal["qemu", "fake"] = "qemu"
    """``fake`` runs "VMs" as host processes with the guest agent (development and API fuzzing only)."""
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    tcg_tb_mb: int | None = Field(default=None, ge=16, le=4096)
    """Translated-code cache of each VM under TCG, in MiB (QEMU ``tb-size``); default half the VM's memory,
    64 to 512. Smaller saves host memory on busy VMs, but a full cache is dropped and retranslated, which
    makes the guest several times slower meanwhile."""
    tcg_guest_aslr: bool = False
    """Under TCG, let sandbox guests randomize process address spaces. Off by default: QEMU finds translated
    code by virtual address, so randomized processes translate their libraries again at every start (exec
    ``true`` back to back 3x slower). The VM is the isolation boundary either way; KVM guests and full VMs
    always randomize."""
    image_dir: Path | None = None
    web_dir: Path | None = None
    ram_dir: Path | None = None
    """Guest RAM files of running VMs (must be tmpfs); default ``/dev/shm/sheesh/<hash of data_dir>``, one per
    instance, so an instance prunes only its own files."""
    boot_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0
    exec_max_timeout_ms: int = 15 * 60 * 1000
    exec_output_limit_bytes: int = 4 * 1024 * 1024
    max_disk_size_mb: int = 64 * 1024
    vm_max_timeout_s: int = 30 * 24 * 3600
    """Longest ``timeoutS`` a VM may be given (30 days)."""
    warm_spares: int = Field(default=1, ge=0, le=16)
    """Warm spares per template (snapshot) and machine shape in use: VMs restored ahead of need and paused
    (each holds its RAM, about 60 MB, and no CPU), so a create from that template takes about 100 ms instead of
    about 250 ms under TCG. A snapshot's spares are made after its first create, and after each create that
    used one. 0: none."""
    auto_pause_s: float = 0
    """Pause a running VM once nothing has used its guest (exec, files, run-ts/js, streams, consoles) for this
    long; the next such request resumes it first. 0 (the default): never."""
    upload_max_bytes: int = 10 * 1024 * 1024
    max_body_bytes: int = 2 * 1024 * 1024
    """Largest request body of the JSON endpoints (uploads stream to their own limits): 413 beyond."""
    image_kernel_max_bytes: int = 256 * 1024 * 1024
    image_rootfs_max_bytes: int = 16 * 1024 * 1024 * 1024
    upload_max_expanded_bytes: int = 1024 * 1024 * 1024
    media_max_bytes: int = 10 * 1000**3
    """Largest ISO (download or upload) or cloud image (download) the node accepts for a full VM: 10 GB."""
    media_blocked_networks: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [
            IPv4Network(n) if "." in n else IPv6Network(n)
            for n in ("127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "::1/128", "::/128", "fe80::/10")
        ]
    )
    """Addresses the node never downloads ISOs or cloud images from (besides the guest network, always
    blocked): loopback, "this network" and link-local, where the clouds' metadata services live."""
    rate_limits: dict[str, int] = Field(
        default_factory=lambda: {"create": 30, "exec": 60, "run_ts": 60, "run_js": 60, "upload": 30, "download": 60}
    )
    """Requests per minute per API key (or client address) for each limited endpoint."""
    guest_network: str = "172.16.0.0/16"
    """VM addresses; the first is the bridge's (the guests' gateway), the last is reserved for templates."""
    network: Literal["auto", "on", "off"] = "auto"
    """VM networking (bridge, taps, nftables): ``auto`` = on when running as root with ip and nft."""
    bridge: str = "sheesh0"
    """Bridge name, also the name of sheesh's nftables tables (one per sheesh instance on a host)."""
    net_uplinks: list[str] = Field(default_factory=list)
    """Interfaces VMs reach the outside through (forwarding, NAT); default: the default route's."""
    guest_dns: list[str] | None = None
    """Name servers written to the guests' /etc/resolv.conf; default: the host's non-loopback ones."""
    port_forward_range: tuple[int, int] = (20000, 29999)
    """Node ports handed out by ``POST /v1/vms/:id/ports``."""
    reconcile_interval_s: float = 2.0
    node_timeout_s: float = 15.0
    """A remote node whose last heartbeat is older than this is UNREACHABLE (its heartbeats come every
    ``heartbeat_interval_s``)."""
    heartbeat_interval_s: float = 3.0
    mem_overcommit: float = 1.0
    """New VMs go to nodes whose memory x this factor is not yet allocated to VMs."""
    redis_url: str | None = None
    """Count rate limits in this Redis (``redis://host:6379/0``, ``unix:///path``), shared by replicas."""
    control_url: str | None = None
    """``sheesh node``: the control plane's base URL the node reports to (several replicas: comma-separated)."""
    node_token: str | None = None
    """``sheesh node``: the node's secret (``sheesh node add NAME`` on the control plane prints it)."""
    control_ca: Path | None = None
    """``sheesh node``: CA bundle (PEM) to check the control plane's certificate with (default: the system's)."""
    node_ca: Path | None = None
    """Control plane: CA bundle (PEM) to check remote nodes' certificates with (default: the system's)."""
    templates: bool = True
    """Serve creates from per-shape template snapshots (first create of a shape boots and builds one)."""
    template_shapes: str = Field(default="1:256", pattern=r"^(\s*\d+:\d+\s*(,\s*\d+:\d+\s*)*)?$")
    """Shapes (``vCPUs:MiB``, comma-separated; empty: none) whose templates are built right after start, for
    the default image, so the first create of such a shape is a restore too."""

    def prebuilt_shapes(self) -> list[tuple[int, int]]:
        """``template_shapes`` as (vCPUs, MiB) pairs (none when templates are off)."""
        if not self.templates:
            return []
        pairs = (item.split(":") for item in self.template_shapes.split(",") if item.strip())
        return [(int(cpu), int(mem)) for cpu, mem in pairs]

    def node_host(self) -> str:
        """The address clients reach the (local) node at: ``node_public_host``, else the listen address
        (loopback when it listens on every address)."""
        if self.node_public_host:
            return self.node_public_host
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def tls_on(self) -> bool:
        return self.tls == "self-signed" or self.tls_cert is not None

    def outbound_blocked(self) -> list[IPv4Network | IPv6Network]:
        """Where sheesh never sends requests to user-given URLs (media downloads, event callbacks, CI clones):
        ``media_blocked_networks`` and the guest network."""
        return [*self.media_blocked_networks, ip_network(self.guest_network)]

    def shared_rate_limits(self) -> bool:
        """Rate limits are counted in the database (shared by replicas) when it is PostgreSQL."""
        return self.resolved_database_url().startswith("postgresql")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'sheesh.db'}"

    def resolved_image_dir(self) -> Path:
        return self.image_dir or self.data_dir / "images"

    def resolved_ram_dir(self) -> Path:
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return self.ram_dir or Path("/dev/shm/sheesh") / digest

    def resolved_web_dir(self) -> Path:
        """Where ``sheesh web fetch`` puts the browser consoles' JavaScript (xterm.js, noVNC)."""
        return self.web_dir or self.data_dir / "web"

    @property
    def vms_dir(self) -> Path:
        return self.data_dir / "vms"
