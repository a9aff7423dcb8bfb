"""Owned OS processes addressed by PID (never by name): spawn, adopt after restart, signal, wait."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

from sheesh.vmm.driver import ProcessUsage, VmmError

MARKER_FILE = "vmm.marker"
"""In a renamed VM's folder (``ProcessTable.move``): the text its process's command line carries, which names
the folder it started in."""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def describe_exit(status: int | None) -> str | None:
    """Why a VM's process ended, for the VM's ``error`` (None for a clean exit, e.g. a guest power-off)."""
    if status is None:
        return "the VM's process ended while sheesh was not its parent (crash, kill or power-off: status unknown)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"the VM's process was killed by {name}"
    return f"the VM's process exited with status {status}" if status else None


def _kib(path: Path, key: str) -> int:
    """The kB figure of the ``key`` line of a /proc file (0 when there is none or it cannot be read)."""
    try:
        line = next((ln for ln in path.read_text().splitlines() if ln.startswith(key)), "")
    except OSError:
        return 0
    return int(line.split()[1]) if line else 0


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class ManagedProcess:
    """A child (or adopted) process. ``marker`` must appear in its command line, so a recycled PID
    belonging to something else is never signalled."""

    def __init__(self, pid: int, marker: str, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.marker = marker
        self._popen = popen

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        marker: str,
        stdout: Path,
        stderr: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        nice: int = 0,
    ) -> ManagedProcess:
        """Start ``argv`` in its own session; ``nice`` > 0 starts it at that lower CPU priority (all its threads)."""
        if marker not in " ".join(argv):
            raise VmmError("process marker must be part of its command line")
        with open(stdout, "ab") as out, open(stderr, "ab") as err:
            try:
                popen = subprocess.Popen(
                    ["nice", "-n", str(nice), *argv] if nice else argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise VmmError(f"cannot start {argv[0]}: {exc}") from exc
        return cls(popen.pid, marker, popen)

    @classmethod
    def adopt(cls, pidfile: Path, marker: str) -> ManagedProcess | None:
        """The process named by ``pidfile`` if it is alive and carries ``marker``."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        proc = cls(pid, marker)
        return proc if proc.alive() else None

    def exit_status(self) -> int | None:
        """The exit status of our own child once it ended (negative: killed by that signal); None for an
        adopted process (not our child: its status is not ours to read) or one still running."""
        return self._popen.poll() if self._popen is not None else None

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self.marker.encode() in _cmdline(self.pid) and not _is_zombie(self.pid)

    def usage(self) -> ProcessUsage | None:
        """From /proc: utime + stime of the process, and its PSS (its RSS where smaps_rollup is not readable)."""
        if not self.alive():
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            memory = _kib(Path(f"/proc/{self.pid}/smaps_rollup"), "Pss:") or _kib(
                Path(f"/proc/{self.pid}/status"), "VmRSS:"
            )
        except (OSError, ValueError, IndexError):
            return None
        return ProcessUsage(cpu_s=cpu_s, mem_mb=memory / 1024)

    def set_nice(self, nice: int) -> None:
        """Run every thread of the process at CPU priority ``nice`` (a lower value than now needs root)."""
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    os.setpriority(os.PRIO_PROCESS, int(task.name), nice)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def wait(self, timeout: float) -> bool:
        """Poll until the process has exited or ``timeout`` passes; True if it exited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.alive():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def terminate(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; reaps our own children."""
        self.signal(signal.SIGTERM)
        if not await self.wait(grace):
            self.signal(signal.SIGKILL)
            await self.wait(5.0)
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1)


async def wait_for_paths(paths: list[Path], proc: ManagedProcess, timeout: float) -> None:
    """Wait until every path exists; fail early if ``proc`` dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(p.exists() for p in paths):
        if not proc.alive():
            raise VmmError("process exited during start-up")
        if loop.time() >= deadline:
            raise VmmError(f"timed out waiting for {', '.join(p.name for p in paths if not p.exists())}")
        await asyncio.sleep(0.005)


class ProcessTable:
    """The VM processes a driver owns, with their working folders (the part every driver shares)."""

    def __init__(self) -> None:
        self._procs: dict[str, ManagedProcess] = {}
        self._workdirs: dict[str, Path] = {}
        self._exits: dict[str, str | None] = {}

    def add(self, vm_id: str, proc: ManagedProcess, workdir: Path) -> None:
        self._exits.pop(vm_id, None)
        self._procs[vm_id] = proc
        self._workdirs[vm_id] = workdir

    def adopt(self, vm_id: str, workdir: Path, pidfile: Path, marker: str) -> bool:
        """Track the process named by ``pidfile`` if it is alive and carries ``marker`` (or, for a VM that
        ``move`` renamed, the marker it started with, kept in its folder)."""
        with contextlib.suppress(OSError):
            marker = (workdir / MARKER_FILE).read_text()
        proc = ManagedProcess.adopt(pidfile, marker)
        if proc is None:
            return False
        self.add(vm_id, proc, workdir)
        return True

    def get(self, vm_id: str) -> ManagedProcess | None:
        return self._procs.get(vm_id)

    def move(self, vm_id: str, new_id: str, workdir: Path) -> ManagedProcess:
        """Give a live VM a new id: its folder moves to ``workdir`` (which must not exist; the process's open
        files and sockets move along) and keeps the process's marker for ``adopt``. VmmError if it does not run
        or the move fails."""
        proc, old = self._procs.get(vm_id), self._workdirs.get(vm_id)
        if proc is None or old is None or not self.alive(vm_id):
            raise VmmError(f"VM {vm_id} is not running")
        try:
            if workdir.exists():
                raise FileExistsError(f"{workdir} exists")
            old.rename(workdir)
        except OSError as exc:
            raise VmmError(f"cannot move the folder of {vm_id}: {exc}") from exc
        (workdir / MARKER_FILE).write_text(proc.marker)
        self.pop(vm_id)
        self.add(new_id, proc, workdir)
        return proc

    def workdir(self, vm_id: str) -> Path | None:
        return self._workdirs.get(vm_id)

    def usage(self, vm_id: str) -> ProcessUsage | None:
        proc = self._procs.get(vm_id)
        return proc.usage() if proc is not None else None

    def alive(self, vm_id: str) -> bool:
        proc = self._procs.get(vm_id)
        if proc is None:
            return False
        if proc.alive():
            return True
        self._exits.setdefault(vm_id, describe_exit(proc.exit_status()))
        return False

    def exit_reason(self, vm_id: str) -> str | None:
        """Why the VM's process ended, once ``alive`` found it gone (until it is started again)."""
        return self._exits.get(vm_id)

    async def wait_stopped(self, vm_id: str, timeout: float) -> bool:
        proc = self._procs.get(vm_id)
        return proc is None or await proc.wait(timeout)

    def pop(self, vm_id: str) -> ManagedProcess | None:
        self._workdirs.pop(vm_id, None)
        return self._procs.pop(vm_id, None)
