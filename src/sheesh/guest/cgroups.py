"""Resource limits for user processes in the guest (standard library only; cgroup v2).

Layout under ``/sys/fs/cgroup`` (mounted by ``rc.sysinit``)::

    sheesh-agent/      the agent itself (high cpu.weight, oom_score_adj -1000)
    sheesh-exec/       every exec, run-ts and run-js: memory.max below the VM's memory, pids.max, low cpu.weight
        <id>/          one job (its own pids.max, so a fork bomb left running in the background still leaves
                       room for other jobs); on timeout the whole cgroup is killed (``cgroup.kill``), escaped
                       children included

The hierarchy is mounted with ``favordynmods`` where the kernel has it (``rc.sysinit``): moving a process
between cgroups then takes no RCU grace period, which under emulation was most of a shell spawn.

A fork bomb or a memory hog in a job hits the limits of ``sheesh-exec`` and nothing else: the agent keeps
answering. Where cgroup v2 is not available (the agent on a host, for tests) ``ExecCgroups.setup`` returns
None and jobs are limited by process-group kills only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

ROOT = "/sys/fs/cgroup"
AGENT = "sheesh-agent"
EXEC = "sheesh-exec"
PIDS_MAX = 2048
"""Processes and threads that all jobs of a VM may have together."""
JOB_PIDS_MAX = 512
"""Processes and threads one job may have."""
KILL_WAIT_S = 10.0
"""How long a timed-out job's answer waits for its processes to be gone."""
RESERVE_MIN_MB = 40
"""Memory kept out of the jobs' reach (the agent, the kernel), at least this or 1/8 of the VM's memory."""


IDLE_KEEP = 4
"""Emptied job cgroups kept for the next jobs: a reused cgroup saves its mkdir, its limit and its rmdir."""


def _write(path: str, value: str) -> None:
    """One write of ``value`` to a control file with bare system calls: under emulation a file object costs
    ~0.3 ms of guest CPU more, and jobs write one or two of these each."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _mem_total_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def exec_memory_max(total_bytes: int) -> int:
    """The memory all jobs may use together: the VM's memory less a reserve for the agent and the kernel."""
    reserve = max(RESERVE_MIN_MB * 1024 * 1024, total_bytes // 8)
    return max(16 * 1024 * 1024, total_bytes - reserve)


class JobCgroup:
    """The cgroup of one job."""

    def __init__(self, path: str) -> None:
        self.path = path

    def add(self, pid: int) -> None:
        """Move ``pid`` here (children it forks later stay here) and make it an ordinary OOM victim again."""
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))
        with contextlib.suppress(OSError):
            _write(f"/proc/{pid}/oom_score_adj", "0")

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, including those that left the process group."""
        with contextlib.suppress(OSError):
            _write(os.path.join(self.path, "cgroup.kill"), "1")

    def populated(self) -> bool:
        """Whether any process is left in the cgroup (``populated`` of ``cgroup.events``)."""
        return _populated(self.path) is True

    def kill_and_wait(self, timeout_s: float = KILL_WAIT_S) -> bool:
        """Kill the cgroup and wait until its processes are gone: ``cgroup.kill`` only sends the signals, and a
        few hundred processes of a fork bomb take seconds to die under emulation. The kill is sent again every
        half second. True when the cgroup is empty."""
        deadline = time.monotonic() + timeout_s
        next_kill = 0.0
        while self.populated():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_kill:
                self.kill()
                next_kill = now + 0.5
            time.sleep(0.02)
        return True

    def remove(self) -> bool:
        """Remove the cgroup if no process is left in it (background jobs keep it); True when gone."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


class ExecCgroups:
    """Gives each job a cgroup of its own under ``sheesh-exec``: an emptied one of an earlier job (its processes
    are all gone, so nothing is left to share it with) or a new one."""

    def __init__(self, root: str = ROOT) -> None:
        self.parent = os.path.join(root, EXEC)
        self._lingering: list[JobCgroup] = []
        self._idle: list[JobCgroup] = []
        self._lock = threading.Lock()

    @classmethod
    def setup(cls, root: str = ROOT) -> ExecCgroups | None:
        """Create the hierarchy, move the agent into its own cgroup and shield it from the OOM killer.
        None when cgroup v2 with the memory and pids controllers is not available."""
        try:
            with open(os.path.join(root, "cgroup.controllers")) as fh:
                available = fh.read().split()
            wanted = [c for c in ("cpu", "memory", "pids") if c in available]
            if "memory" not in wanted or "pids" not in wanted:
                return None
            _write(os.path.join(root, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
            agent = os.path.join(root, AGENT)
            os.makedirs(agent, exist_ok=True)
            _write(os.path.join(agent, "cgroup.procs"), str(os.getpid()))
            jobs = os.path.join(root, EXEC)
            os.makedirs(jobs, exist_ok=True)
            _write(os.path.join(jobs, "memory.max"), str(exec_memory_max(_mem_total_bytes())))
            with contextlib.suppress(OSError):
                _write(os.path.join(jobs, "memory.swap.max"), "0")
            _write(os.path.join(jobs, "pids.max"), str(PIDS_MAX))
            _write(os.path.join(jobs, "cgroup.subtree_control"), "+pids")
            if "cpu" in wanted:
                _write(os.path.join(agent, "cpu.weight"), "1000")
                _write(os.path.join(jobs, "cpu.weight"), "100")
        except OSError:
            return None
        with contextlib.suppress(OSError):
            _write("/proc/self/oom_score_adj", "-1000")
        return cls(root)

    def new(self) -> JobCgroup:
        """An empty cgroup for one job, limited to ``JOB_PIDS_MAX``: one a finished job left empty (``sweep``)
        or a new one."""
        self.sweep()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        path = os.path.join(self.parent, os.urandom(8).hex())
        os.mkdir(path)
        _write(os.path.join(path, "pids.max"), str(JOB_PIDS_MAX))
        return JobCgroup(path)

    def release(self, cgroup: JobCgroup) -> None:
        """The job is over: its cgroup is reused or removed at the next ``sweep`` (or ``new``, which the refill
        of the shell pool calls after the answer) once no process of the job is left in it. Nothing is done
        here: that would delay the job's answer."""
        with self._lock:
            self._lingering.append(cgroup)

    def sweep(self) -> None:
        """Released cgroups that no process is left in become idle (up to ``IDLE_KEEP``) or are removed; those
        that background processes of their job still hold stay for a later sweep."""
        with self._lock:
            lingering, self._lingering = self._lingering, []
        held: list[JobCgroup] = []
        for cgroup in lingering:
            populated = _populated(cgroup.path)
            if populated is None:  # gone already
                continue
            if not populated:
                with self._lock:
                    if len(self._idle) < IDLE_KEEP:
                        self._idle.append(cgroup)
                        continue
                if cgroup.remove():
                    continue
            held.append(cgroup)
        with self._lock:
            self._lingering.extend(held)


def _populated(path: str) -> bool | None:
    """``populated`` of the cgroup at ``path`` (None: no such cgroup), read with bare system calls."""
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        events = os.read(fd, 4096)
    finally:
        os.close(fd)
    for line in events.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"populated":
            return value.strip() != b"0"
    return False
