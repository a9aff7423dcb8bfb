"""``VmmDriver`` on QEMU microVMs. TCG by default where KVM cannot run the guest; ``auto`` probes KVM once.

Guest RAM lives in a file: the VM's own shared file under ``ram_dir`` (so a snapshot copies it instead of
streaming it, with the ``x-ignore-shared`` migration capability), or, for a VM restored from a snapshot,
the snapshot's RAM file mapped copy-on-write (its own snapshots then stream the RAM).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from sheesh.vmm.driver import (
    SNAPSHOT_DISK,
    SNAPSHOT_MEMORY,
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
from sheesh.vmm.qemu.cmdline import (
    CDROM_ID,
    PIDFILE,
    QMP_SOCKET,
    HostFacts,
    build_argv,
    host_tsc_khz,
    overlay_argv,
    probe_argv,
)

IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]
SAFE_FORMATS = frozenset({"raw", "qcow2", "qcow", "vdi", "vhdx", "vpc", "qed", "parallels", "dmg"})
"""Image formats accepted from users: single-file formats only (a VMDK descriptor, for one, can name any
host file as an extent)."""
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


async def _run(argv: list[str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise VmmError(f"{what} failed: {out.decode(errors='replace').strip()}")


BACKGROUND_NICE = 10
"""CPU priority of machines started in the background (``MachineSpec.background``): a warm spare made while
a user's VM runs its first commands takes the CPU the user's VM leaves."""
KVM_PROBE_TIMEOUT_S = 8.0
"""Bound of the KVM probe boot: under a working KVM the kernel reaches its panic in about a second; a KVM that
cannot run the guest hangs until the bound, and the first VM waits for it (once: the answer is cached)."""


class QemuDriver:
    """Implements ``VmmDriver``. ``accel``: ``kvm``, ``tcg`` or ``auto`` (KVM if a probe boot works, the
    result cached in ``state_dir``)."""

    name = "qemu"

    def __init__(
        self,
        state_dir: Path,
        accel: str = "auto",
        *,
        binary: str = "qemu-system-x86_64",
        qemu_img: str = "qemu-img",
        ram_dir: Path = Path("/dev/shm/sheesh/default"),
        tcg_tb_mb: int | None = None,
        tcg_guest_aslr: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.accel_setting = accel
        self.binary = shutil.which(binary) or binary
        self.qemu_img = shutil.which(qemu_img) or qemu_img
        self.ram_dir = ram_dir
        self.tcg_tb_mb = tcg_tb_mb
        self.tcg_guest_aslr = tcg_guest_aslr
        self._table = ProcessTable()
        self._host: HostFacts | None = None
        self._probe_lock = asyncio.Lock()
        self._qmp_locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}

    def ram_file(self, vm_id: str) -> Path:
        return self.ram_dir / f"{vm_id}.ram"

    async def _facts(self, spec: MachineSpec) -> HostFacts:
        async with self._probe_lock:
            if self._host is None:
                accel = self.accel_setting
                if accel == "auto":
                    accel = "kvm" if await self._kvm_works(spec) else "tcg"
                self._host = HostFacts(self.binary, accel, host_tsc_khz(), self.tcg_tb_mb, self.tcg_guest_aslr)
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

    async def boots(self, kernel: Path, accel: str, timeout: float = KVM_PROBE_TIMEOUT_S) -> bool:
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
        await _run(overlay_argv(self.qemu_img, base, disk, size_mb), "qemu-img create")

    async def create_disk_from(self, snapshot_disk: Path, disk: Path) -> None:
        await _run(overlay_argv(self.qemu_img, snapshot_disk, disk, None, "qcow2"), "qemu-img create")

    async def start(self, spec: MachineSpec) -> int:
        host = await self._facts(spec)
        wd = spec.workdir
        for stale in (wd / QMP_SOCKET, wd / PIDFILE):
            stale.unlink(missing_ok=True)
        self.ram_dir.mkdir(parents=True, exist_ok=True)
        self.ram_file(spec.vm_id).unlink(missing_ok=True)
        proc = ManagedProcess.spawn(
            build_argv(spec, host, self.ram_file(spec.vm_id)),
            str(wd / QMP_SOCKET),
            wd / STDOUT_LOG,
            wd / STDERR_LOG,
            nice=BACKGROUND_NICE if spec.background else 0,
        )
        self._table.add(spec.vm_id, proc, wd)
        try:
            await wait_for_paths([wd / QMP_SOCKET, wd / PIDFILE], proc, 10.0)
            if spec.restore is not None:
                await self._incoming(spec.vm_id, spec.restore.state, ram_in_stream=spec.restore.memory is None)
        except VmmError as exc:
            await self.kill(spec.vm_id)
            err = (wd / STDERR_LOG).read_text(errors="replace")[-2000:].strip()
            raise VmmError(f"QEMU failed to start: {err or exc.message}") from exc
        return proc.pid

    async def _incoming(self, vm_id: str, state: Path, ram_in_stream: bool) -> None:
        """Load a saved machine into a QEMU started with ``-incoming defer`` and run it. When the RAM is in
        the stream, ``x-ignore-shared`` must stay off (the new VM's own RAM file is shared and must receive
        the pages)."""
        async with self._qmp(vm_id) as qmp:
            if not ram_in_stream:
                await qmp.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED})
            await qmp.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"})
            await self._wait_migration(qmp)
            await qmp.execute("cont")

    @staticmethod
    async def _wait_migration(qmp: QMPClient, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            reply = await qmp.execute("query-migrate")
            status: dict[str, Any] = reply if isinstance(reply, dict) else {}
            state = status.get("status")
            if state == "completed":
                return
            if state in ("failed", "cancelled"):
                raise VmmError(f"migration {state}: {status.get('error-desc', '')}")
            if time.monotonic() > deadline:
                raise VmmError("migration timed out")
            await asyncio.sleep(0.002)

    async def attach(self, vm_id: str, workdir: Path) -> bool:
        if self._table.adopt(vm_id, workdir, workdir / PIDFILE, str(workdir / QMP_SOCKET)):
            return True
        self.ram_file(vm_id).unlink(missing_ok=True)
        return False

    def is_running(self, vm_id: str) -> bool:
        if self._table.get(vm_id) is None:
            return False
        if self._table.alive(vm_id):
            return True
        self._table.pop(vm_id)  # QEMU exited (guest power-off, crash): forget it and free its RAM, once
        self._qmp_locks.pop(vm_id, None)
        self.ram_file(vm_id).unlink(missing_ok=True)
        return False

    def exit_reason(self, vm_id: str) -> str | None:
        return self._table.exit_reason(vm_id)

    def usage(self, vm_id: str) -> ProcessUsage | None:
        return self._table.usage(vm_id)

    def prune(self, keep: set[str]) -> list[str]:
        gone = [f.stem for f in self.ram_dir.glob("*.ram") if f.stem not in keep and not self._table.alive(f.stem)]
        for vm_id in gone:
            self.ram_file(vm_id).unlink(missing_ok=True)
        return gone

    def _qmp_lock(self, vm_id: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        held = self._qmp_locks.get(vm_id)
        if held is None or held[0] is not loop:
            held = self._qmp_locks[vm_id] = (loop, asyncio.Lock())
        return held[1]

    @contextlib.asynccontextmanager
    async def _qmp(self, vm_id: str) -> Any:
        """A QMP session with the VM's QEMU, one at a time per VM: QEMU's QMP socket serves one client, and
        a second connecting meanwhile fails its handshake (EINVAL), so concurrent callers take turns."""
        async with self._qmp_lock(vm_id), self._qmp_session(vm_id) as qmp:
            yield qmp

    @contextlib.asynccontextmanager
    async def _qmp_session(self, vm_id: str) -> Any:
        wd = self._table.workdir(vm_id)
        if wd is None or not self.is_running(vm_id):
            raise VmmError(f"VM {vm_id} is not running")
        client = None
        try:
            client = await _connect_qmp(vm_id, wd / QMP_SOCKET, QMP_CONNECT_TIMEOUT_S)
            yield client
        except VmmError:
            raise
        except Exception as exc:
            raise VmmError(f"QMP on {vm_id} failed: {exc}") from exc
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.disconnect()

    async def _command(self, vm_id: str, command: str, args: dict[str, Any] | None = None) -> Any:
        async with self._qmp(vm_id) as qmp:
            return await asyncio.wait_for(qmp.execute(command, args) if args else qmp.execute(command), 10)

    async def rename(self, vm_id: str, new_id: str, workdir: Path) -> None:
        async with self._qmp_lock(vm_id):  # no QMP session may be open on the folder as it moves
            proc = self._table.move(vm_id, new_id, workdir)
            self._qmp_locks.pop(vm_id, None)
            if self.ram_file(vm_id).exists():
                self.ram_file(vm_id).rename(self.ram_file(new_id))
        proc.set_nice(0)

    async def powerdown(self, vm_id: str) -> None:
        if self.is_running(vm_id):
            await self._command(vm_id, "system_powerdown")

    async def pause(self, vm_id: str) -> None:
        await self._command(vm_id, "stop")

    async def resume(self, vm_id: str) -> None:
        await self._command(vm_id, "cont")

    async def resize_disk(self, vm_id: str, size_mb: int) -> None:
        await self._command(vm_id, "block_resize", {"device": "root", "size": size_mb * 1024 * 1024})

    async def snapshot(self, vm_id: str, dest: Path) -> SnapshotFiles:
        wd = self._table.workdir(vm_id)
        if wd is None:
            raise VmmError(f"VM {vm_id} is not running")
        dest.mkdir(parents=True, exist_ok=True)
        ram = self.ram_file(vm_id)
        shared = ram.exists()
        started = time.monotonic()
        async with self._qmp(vm_id) as qmp:
            status = await qmp.execute("query-status")
            was_running = isinstance(status, dict) and status.get("running", False)
            # the stream records this capability and the restore must match it: on only when the RAM is our
            # own shared file (copied beside the stream); off streams the RAM (a VM restored copy-on-write)
            caps = [{"capability": "x-ignore-shared", "state": shared}]
            await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
            await qmp.execute("stop")
            try:
                await qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(dest / SNAPSHOT_STATE))}"})
                await self._wait_migration(qmp)
                copies = [
                    _run(["cp", "--sparse=always", str(wd / "disk.qcow2"), str(dest / SNAPSHOT_DISK)], "disk copy")
                ]
                if shared:
                    copies.append(_run(["cp", "--sparse=always", str(ram), str(dest / SNAPSHOT_MEMORY)], "RAM copy"))
                await asyncio.gather(*copies)
            finally:
                if was_running:
                    await qmp.execute("cont")
        return SnapshotFiles(
            dest / SNAPSHOT_STATE,
            dest / SNAPSHOT_MEMORY if shared else None,
            dest / SNAPSHOT_DISK,
            (time.monotonic() - started) * 1000,
        )

    async def change_cdrom(self, vm_id: str, iso: Path | None) -> None:
        if iso is None:
            await self._command(vm_id, "blockdev-open-tray", {"id": CDROM_ID, "force": True})
            await self._command(vm_id, "blockdev-remove-medium", {"id": CDROM_ID})
            return
        args = {"id": CDROM_ID, "filename": str(iso), "format": "raw", "read-only-mode": "read-only"}
        await self._command(vm_id, "blockdev-change-medium", args)

    async def set_vnc_password(self, vm_id: str, password: str) -> None:
        await self._command(vm_id, "change-vnc-password", {"password": password[:8]})

    async def inspect_disk(self, path: Path) -> DiskInfo:
        argv = [self.qemu_img, "info", "--output=json", str(path)]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise VmmError("qemu-img info timed out") from exc
        if proc.returncode != 0:
            raise VmmError(f"not a disk image QEMU can read: {err.decode(errors='replace').strip()}")
        info = json.loads(out)
        fmt = str(info.get("format", ""))
        if fmt not in SAFE_FORMATS:
            raise VmmError(f"image format {fmt!r} is not accepted (one of: {', '.join(sorted(SAFE_FORMATS))})")
        specific = info.get("format-specific", {}).get("data", {})
        if isinstance(specific, dict) and specific.get("data-file"):
            raise VmmError("images with an external data file are not accepted")
        backing = info.get("backing-filename") or info.get("full-backing-filename")
        return DiskInfo(fmt, int(info.get("virtual-size", 0)), str(backing) if backing else None)

    async def convert_disk(self, source: Path, fmt: str, dest: Path, size_mb: int, progress: ProgressFn) -> None:
        argv = [self.qemu_img, "convert", "-p", "-f", fmt, "-O", "qcow2", str(source), str(dest)]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        last = -1
        try:
            buf = b""
            while chunk := await proc.stdout.read(256):
                buf += chunk
                *done, buf = re.split(rb"[\r\n]", buf)
                for line in done:
                    if (m := _PROGRESS.search(line)) and int(float(m.group(1))) != last:
                        last = int(float(m.group(1)))
                        await progress(last)
            err = await proc.stderr.read()
            await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise VmmError(f"qemu-img convert failed: {err.decode(errors='replace').strip()}")
        info = await self.inspect_disk(dest)
        if info.virtual_size < size_mb * 1024 * 1024:
            await _run([self.qemu_img, "resize", "-q", "-f", "qcow2", str(dest), f"{size_mb}M"], "qemu-img resize")

    async def wait_stopped(self, vm_id: str, timeout: float) -> bool:
        return await self._table.wait_stopped(vm_id, timeout)

    async def kill(self, vm_id: str) -> None:
        proc = self._table.pop(vm_id)
        if proc is not None:
            await proc.terminate(grace=1.0)
        self._qmp_locks.pop(vm_id, None)
        self.ram_file(vm_id).unlink(missing_ok=True)


QMP_CONNECT_TIMEOUT_S = 5.0
_QMP_MOMENTS = (ConnectionRefusedError, GreetingError, NegotiationError)
"""Why a QMP connection may fail in a passing moment of QEMU's (see ``_connect_qmp``)."""


async def _connect_qmp(vm_id: str, socket: Path, timeout_s: float) -> QMPClient:
    """A QMP client connected to ``socket``; two moments of QEMU's are tried again until ``timeout_s``:

    - QEMU creates the socket file when it binds it, a moment before it listens: the connection is refused
      (seen under load);
    - an event QEMU emits while it takes a new client (a VNC viewer connecting, say) can reach that client
      ahead of its greeting or of the reply to its capabilities negotiation, which then fails (seen with
      concurrent VNC logins). No command was sent on that connection, so a new one is safe."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        client = QMPClient(f"sheesh-{vm_id}")
        try:
            await asyncio.wait_for(client.connect(str(socket)), max(0.05, deadline - loop.time()))
            return client
        except ConnectError as exc:
            if not isinstance(exc.exc, _QMP_MOMENTS) or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.01)
