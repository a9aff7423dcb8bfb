"""The VMM driver seam: what the node agent needs from a hypervisor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sheesh.errors import SheeshError


class VmmError(SheeshError):
    """Root of hypervisor driver failures."""


@dataclass(frozen=True)
class RestoreSource:
    """A saved machine to resume instead of booting: device state (``state``) and, for snapshots taken
    with shared guest RAM, the RAM file (mapped copy-on-write; ``None`` means the RAM is in ``state``)."""

    state: Path
    memory: Path | None


@dataclass(frozen=True)
class MachineSpec:
    """One VM to boot. ``workdir`` holds its sockets, logs and pid file and belongs to this VM only."""

    vm_id: str
    cpu: int
    mem_mb: int
    kernel: Path
    initrd: Path
    disk: Path
    workdir: Path
    kernel_args: tuple[str, ...] = ()
    restore: RestoreSource | None = None
    tap: str | None = None
    """Host tap interface of the VM's virtio NIC (none: no network device)."""
    mac: str | None = None
    full: bool = False
    """A full (VPS-style) machine: PC chipset with firmware, VGA on a VNC socket, a CD-ROM drive."""
    firmware_boot: bool = False
    """Full machines only: let the firmware boot the CD-ROM or the disk instead of ``kernel``."""
    cdrom: Path | None = None
    """Full machines only: ISO in the CD-ROM drive at start."""
    seed: Path | None = None
    """Full machines only: a cloud-init NoCloud seed ISO attached as a second read-only drive."""
    background: bool = False
    """A machine made ahead of need (a warm spare): it runs at low CPU priority until ``rename`` claims it."""


@dataclass(frozen=True)
class DiskInfo:
    """What ``inspect_disk`` found in an image file."""

    format: str
    virtual_size: int
    backing_file: str | None


ProgressFn = Callable[[int], Awaitable[None]]
"""Awaited with a percentage as long work advances."""


@dataclass(frozen=True)
class SnapshotFiles:
    """What ``VmmDriver.snapshot`` wrote into its destination folder."""

    state: Path
    memory: Path | None
    disk: Path
    save_ms: float


# Files a driver keeps in a VM's workdir (shared names so logs can be served driver-independently).
AGENT_SOCKET = "agent.sock"
SERIAL_SOCKET = "serial.sock"
"""Stream socket carrying the VM's serial console (one client at a time)."""
VNC_SOCKET = "vnc.sock"
"""Full machines: the VGA display's RFB (VNC) server, password-protected."""
SERIAL_LOG = "serial.log"
STDOUT_LOG = "vmm.stdout.log"
STDERR_LOG = "vmm.stderr.log"
SNAPSHOT_STATE = "state"
SNAPSHOT_MEMORY = "memory"
SNAPSHOT_DISK = "disk.qcow2"


@dataclass(frozen=True, kw_only=True)
class ProcessUsage:
    """What a VM's machine process has used: CPU seconds (user + system, since it started) and memory (its
    proportional share, PSS, in MiB)."""

    cpu_s: float
    mem_mb: float


class VmmDriver(Protocol):
    """Starts and stops VMs; each VM exposes a guest-agent stream socket at ``workdir/AGENT_SOCKET``.

    Implementations own the processes they start and address them by PID; every method is safe to call
    for a VM the driver no longer tracks (it then does nothing or returns False).
    """

    name: str

    async def create_disk(self, base: Path, disk: Path, size_mb: int) -> None:
        """Create ``disk`` as a copy-on-write overlay of the read-only ``base`` rootfs, ``size_mb`` large."""
        ...

    async def start(self, spec: MachineSpec) -> int:
        """Launch the VM and return its PID once its control sockets exist. Raises VmmError on failure."""
        ...

    async def attach(self, vm_id: str, workdir: Path) -> bool:
        """Re-adopt a VM process left running by an earlier manager. True if it is alive and now tracked."""
        ...

    def is_running(self, vm_id: str) -> bool:
        """Whether the VM's process is alive (a process found dead gives back its resources, e.g. RAM)."""
        ...

    def usage(self, vm_id: str) -> ProcessUsage | None:
        """CPU and memory of the VM's process; None if it does not run."""
        ...

    def exit_reason(self, vm_id: str) -> str | None:
        """Why the VM's process ended, once ``is_running`` found it gone: "killed by SIGKILL", ... (None: a
        clean exit such as a guest power-off, or the VM was never seen ending)."""
        ...

    def prune(self, keep: set[str]) -> list[str]:
        """Free what VMs not in ``keep`` and not running left behind on the host (RAM files of processes
        that died while no manager watched them); returns their ids."""
        ...

    async def rename(self, vm_id: str, new_id: str, workdir: Path) -> None:
        """Give a running VM a new id: its workdir moves to ``workdir`` (a path on the same file system that does
        not exist) with everything in it, its process runs on (at normal priority from now on) and ``attach``
        finds it there under ``new_id`` after a restart. VmmError if it does not run or the move fails."""
        ...

    async def powerdown(self, vm_id: str) -> None:
        """Ask the guest to shut down (ACPI power button). Returns without waiting."""
        ...

    async def wait_stopped(self, vm_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; True if it has."""
        ...

    async def kill(self, vm_id: str) -> None:
        """Force the VM off and forget it. Idempotent."""
        ...

    async def create_disk_from(self, snapshot_disk: Path, disk: Path) -> None:
        """Create ``disk`` as a copy-on-write overlay of a snapshot's disk (same size)."""
        ...

    async def snapshot(self, vm_id: str, dest: Path) -> SnapshotFiles:
        """Pause, save device state + RAM + a copy of the disk into ``dest``, resume (unless it was paused)."""
        ...

    async def pause(self, vm_id: str) -> None: ...

    async def resume(self, vm_id: str) -> None: ...

    async def resize_disk(self, vm_id: str, size_mb: int) -> None:
        """Grow the VM's disk while it runs (the guest sees a capacity change)."""
        ...

    async def change_cdrom(self, vm_id: str, iso: Path | None) -> None:
        """Put ``iso`` into the running full VM's CD-ROM drive (``None`` ejects), as a media change."""
        ...

    async def set_vnc_password(self, vm_id: str, password: str) -> None:
        """Set the password of the running full VM's VNC server (only the first 8 characters count)."""
        ...

    async def convert_disk(self, source: Path, fmt: str, dest: Path, size_mb: int, progress: ProgressFn) -> None:
        """Write ``source`` (in QEMU format ``fmt``) as a standalone qcow2 disk ``dest`` of at least
        ``size_mb``; ``progress(percent)`` is called as the copy advances."""
        ...

    async def inspect_disk(self, path: Path) -> DiskInfo:
        """Format, virtual size and backing file of an image file (untrusted input)."""
        ...
