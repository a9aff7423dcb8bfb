"""A VMM driver without a hypervisor: each "VM" is a host process running the real guest agent on a
Unix socket, with ``/workspace`` mapped to ``workdir/workspace``. For unit and integration tests."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

from sheesh.vmm.driver import (
    AGENT_SOCKET,
    SERIAL_LOG,
    SNAPSHOT_DISK,
    SNAPSHOT_STATE,
    STDERR_LOG,
    STDOUT_LOG,
    DiskInfo,
    MachineSpec,
    ProcessUsage,
    ProgressFn,
    SnapshotFiles,
    VmmError,
)
from sheesh.vmm.process import ManagedProcess, ProcessTable, wait_for_paths


class FakeDriver:
    """Implements ``VmmDriver``. ``fail_start`` makes the next start fail, to test error paths."""

    name = "fake"

    def __init__(self) -> None:
        self._table = ProcessTable()
        self.resized: dict[str, int] = {}
        self.fail_start = False
        self.powerdowns: list[str] = []
        self.cdroms: dict[str, Path | None] = {}
        self.vnc_passwords: dict[str, str] = {}
        self.specs: dict[str, MachineSpec] = {}
        self._links: dict[str, Path] = {}
        """Renamed VMs: the link left at the folder their agent was started in (see ``rename``)."""

    async def create_disk(self, base: Path, disk: Path, size_mb: int) -> None:
        disk.write_text(json.dumps({"base": str(base), "size_mb": size_mb}))

    async def start(self, spec: MachineSpec) -> int:
        if self.fail_start:
            self.fail_start = False
            raise VmmError("fake start failure")
        self.specs[spec.vm_id] = spec
        self.cdroms[spec.vm_id] = spec.cdrom
        workspace = spec.workdir / "workspace"
        workspace.mkdir(exist_ok=True)
        if spec.restore is not None:
            shutil.unpack_archive(spec.restore.state, workspace, "tar")
        sock = spec.workdir / AGENT_SOCKET
        sock.unlink(missing_ok=True)
        (spec.workdir / SERIAL_LOG).open("a").write(f"fake boot of {spec.vm_id}\n")
        argv = [
            sys.executable,
            "-m",
            "sheesh.guest.agent",
            "--listen",
            str(sock),
            "--workspace",
            str(workspace),
            "--same-user",
        ]
        proc = ManagedProcess.spawn(argv, str(sock), spec.workdir / STDOUT_LOG, spec.workdir / STDERR_LOG)
        (spec.workdir / "vmm.pid").write_text(str(proc.pid))
        self._table.add(spec.vm_id, proc, spec.workdir)
        await wait_for_paths([sock], proc, 10.0)
        return proc.pid

    async def attach(self, vm_id: str, workdir: Path) -> bool:
        return self._table.adopt(vm_id, workdir, workdir / "vmm.pid", str(workdir / AGENT_SOCKET))

    async def rename(self, vm_id: str, new_id: str, workdir: Path) -> None:
        """As QEMU's: the folder moves with the agent's socket in it. The fake agent was given its workspace
        by path, so a link at the old folder keeps that path valid until the VM is killed."""
        old = self._table.workdir(vm_id)
        self._table.move(vm_id, new_id, workdir)
        assert old is not None  # move checked it
        old.symlink_to(workdir)
        self._links[new_id] = self._links.pop(vm_id, old)
        if vm_id in self.specs:
            self.specs[new_id] = self.specs.pop(vm_id)
        if vm_id in self.cdroms:
            self.cdroms[new_id] = self.cdroms.pop(vm_id)

    def is_running(self, vm_id: str) -> bool:
        return self._table.alive(vm_id)

    def exit_reason(self, vm_id: str) -> str | None:
        return self._table.exit_reason(vm_id)

    def usage(self, vm_id: str) -> ProcessUsage | None:
        return self._table.usage(vm_id)

    def prune(self, keep: set[str]) -> list[str]:
        return []  # fake VMs hold nothing outside their folder

    async def powerdown(self, vm_id: str) -> None:
        self.powerdowns.append(vm_id)
        if (proc := self._table.get(vm_id)) is not None:
            proc.signal(signal.SIGTERM)

    async def wait_stopped(self, vm_id: str, timeout: float) -> bool:
        return await self._table.wait_stopped(vm_id, timeout)

    async def kill(self, vm_id: str) -> None:
        proc = self._table.pop(vm_id)
        if proc is not None:
            proc.signal(signal.SIGCONT)
            await proc.terminate(grace=0.5)
        if (link := self._links.pop(vm_id, None)) is not None:
            link.unlink(missing_ok=True)

    async def create_disk_from(self, snapshot_disk: Path, disk: Path) -> None:
        disk.write_text(json.dumps({"base": str(snapshot_disk)}))

    async def snapshot(self, vm_id: str, dest: Path) -> SnapshotFiles:
        """The fake's machine state is its workspace folder, archived."""
        wd = self._table.workdir(vm_id)
        if wd is None or not self.is_running(vm_id):
            raise VmmError(f"VM {vm_id} is not running")
        dest.mkdir(parents=True, exist_ok=True)
        archive = shutil.make_archive(str(dest / "workspace"), "tar", wd / "workspace")
        Path(archive).rename(dest / SNAPSHOT_STATE)
        shutil.copyfile(wd / "disk.qcow2", dest / SNAPSHOT_DISK)
        return SnapshotFiles(dest / SNAPSHOT_STATE, None, dest / SNAPSHOT_DISK, 0.0)

    async def pause(self, vm_id: str) -> None:
        if (proc := self._table.get(vm_id)) is not None:
            proc.signal(signal.SIGSTOP)

    async def resume(self, vm_id: str) -> None:
        if (proc := self._table.get(vm_id)) is not None:
            proc.signal(signal.SIGCONT)

    async def resize_disk(self, vm_id: str, size_mb: int) -> None:
        self.resized[vm_id] = size_mb

    async def change_cdrom(self, vm_id: str, iso: Path | None) -> None:
        if not self.is_running(vm_id):
            raise VmmError(f"VM {vm_id} is not running")
        self.cdroms[vm_id] = iso

    async def set_vnc_password(self, vm_id: str, password: str) -> None:
        if not self.is_running(vm_id):
            raise VmmError(f"VM {vm_id} is not running")
        self.vnc_passwords[vm_id] = password[:8]

    async def inspect_disk(self, path: Path) -> DiskInfo:
        """Fake images are JSON ``{"format", "virtual_size", "backing_file"}``; anything else is raw."""
        try:
            meta = json.loads(path.read_bytes())
            return DiskInfo(str(meta["format"]), int(meta["virtual_size"]), meta.get("backing_file"))
        except (ValueError, KeyError, TypeError):
            return DiskInfo("raw", path.stat().st_size, None)

    async def convert_disk(self, source: Path, fmt: str, dest: Path, size_mb: int, progress: ProgressFn) -> None:
        for percent in (0, 50, 100):
            await progress(percent)
        dest.write_text(json.dumps({"base": None, "converted_from": fmt, "size_mb": size_mb}))
