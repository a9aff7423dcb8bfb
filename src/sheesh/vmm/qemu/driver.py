"""``VmmDriver`` on QEMU microVMs. TCG by default where KVM cannot run the guest; ``auto`` probes KVM once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from qemu.qmp import QMPClient

from sheesh.vmm.driver import STDERR_LOG, STDOUT_LOG, MachineSpec, VmmError
from sheesh.vmm.process import ManagedProcess, wait_for_paths
from sheesh.vmm.qemu.cmdline import (
    PIDFILE,
    QMP_SOCKET,
    HostFacts,
    build_argv,
    host_tsc_khz,
    overlay_argv,
    probe_argv,
)


class QemuDriver:
    """Implements ``VmmDriver``. ``accel``: ``kvm``, ``tcg`` or ``auto`` (KVM if a probe boot works, the
    result cached in ``state_dir``)."""

    name = "qemu"

    def __init__(
        self, state_dir: Path, accel: str = "auto", binary: str = "qemu-system-x86_64", qemu_img: str = "qemu-img"
    ) -> None:
        self.state_dir = state_dir
        self.accel_setting = accel
        self.binary = shutil.which(binary) or binary
        self.qemu_img = shutil.which(qemu_img) or qemu_img
        self._procs: dict[str, ManagedProcess] = {}
        self._workdirs: dict[str, Path] = {}
        self._host: HostFacts | None = None
        self._probe_lock = asyncio.Lock()

    async def _facts(self, spec: MachineSpec) -> HostFacts:
        async with self._probe_lock:
            if self._host is None:
                accel = self.accel_setting
                if accel == "auto":
                    accel = "kvm" if await self._kvm_works(spec) else "tcg"
                self._host = HostFacts(self.binary, accel, host_tsc_khz())
            return self._host

    async def _kvm_works(self, spec: MachineSpec) -> bool:
        """Boot the kernel under KVM until it panics for want of an init; cached per kernel+QEMU."""
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return False
        cache = self.state_dir / "kvm-probe.json"
        key = f"{self.binary}:{spec.kernel}:{spec.kernel.stat().st_mtime_ns}"
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return bool(saved["kvm"])
        ok = await self.boots(spec.kernel, "kvm")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "kvm": ok}))
        return ok

    async def boots(self, kernel: Path, accel: str, timeout: float = 20.0) -> bool:
        """Whether ``kernel`` boots under ``accel`` far enough to panic for want of an init."""
        argv = probe_argv(self.binary, kernel, accel, host_tsc_khz())
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError:
            return False
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False
        return b"Kernel panic" in out or b"No working init" in out

    async def create_disk(self, base: Path, disk: Path, size_mb: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            *overlay_argv(self.qemu_img, base, disk, size_mb), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise VmmError(f"qemu-img create failed: {out.decode(errors='replace').strip()}")

    async def start(self, spec: MachineSpec) -> int:
        host = await self._facts(spec)
        wd = spec.workdir
        for stale in (wd / QMP_SOCKET, wd / PIDFILE):
            stale.unlink(missing_ok=True)
        argv = build_argv(spec, host)
        proc = ManagedProcess.spawn(argv, str(wd / QMP_SOCKET), wd / STDOUT_LOG, wd / STDERR_LOG)
        self._procs[spec.vm_id] = proc
        self._workdirs[spec.vm_id] = wd
        try:
            await wait_for_paths([wd / QMP_SOCKET, wd / PIDFILE], proc, 10.0)
        except VmmError as exc:
            await self.kill(spec.vm_id)
            err = (wd / STDERR_LOG).read_text(errors="replace")[-2000:].strip()
            raise VmmError(f"QEMU failed to start: {err or exc.message}") from exc
        return proc.pid

    async def attach(self, vm_id: str, workdir: Path) -> bool:
        proc = ManagedProcess.adopt(workdir / PIDFILE, str(workdir / QMP_SOCKET))
        if proc is None:
            return False
        self._procs[vm_id] = proc
        self._workdirs[vm_id] = workdir
        return True

    def is_running(self, vm_id: str) -> bool:
        proc = self._procs.get(vm_id)
        return proc is not None and proc.alive()

    async def _qmp(self, vm_id: str, command: str) -> None:
        wd = self._workdirs.get(vm_id)
        if wd is None or not self.is_running(vm_id):
            return
        client = QMPClient(f"sheesh-{vm_id}")
        try:
            await asyncio.wait_for(client.connect(str(wd / QMP_SOCKET)), 5)
            await asyncio.wait_for(client.execute(command), 5)
        except Exception as exc:
            raise VmmError(f"QMP {command} failed: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def powerdown(self, vm_id: str) -> None:
        await self._qmp(vm_id, "system_powerdown")

    async def wait_stopped(self, vm_id: str, timeout: float) -> bool:
        proc = self._procs.get(vm_id)
        return proc is None or await proc.wait(timeout)

    async def kill(self, vm_id: str) -> None:
        proc = self._procs.pop(vm_id, None)
        self._workdirs.pop(vm_id, None)
        if proc is not None:
            await proc.terminate(grace=1.0)
