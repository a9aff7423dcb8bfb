"""Running user processes in the guest (standard library only): login shells as the exec user, one job each.

Every exec, run-ts and run-js runs in a ``bash -l`` started as uid/gid 1000 that waits on a pipe for exactly
one job. The agent moves the shell into a cgroup of its own (``cgroups.py``) *before* writing the job, so
everything the job starts is limited (pids, memory) and can be killed as a whole on timeout. Shells are
started ahead of time (``WarmShells``): the fork and the profile are off the exec path; with none ready, one is
started on the spot and used at once.

The job is sourced from the pipe and ends by setting ``__sheesh_cmd``; the shell then ``eval``\\ s it from its
``-c`` line, so messages read ``bash: line 1: ...`` exactly as with ``bash -lc cmd``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sheesh.guest import handoff, spawned
from sheesh.guest.cgroups import ExecCgroups, JobCgroup
from sheesh.guest.protocol import ErrorKind
from sheesh.guest.spawned import Process

GUEST_WORKSPACE = "/workspace"
EXIT_TIMEOUT = 124
DEFAULT_OUTPUT_LIMIT = 4 * 1024 * 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RequestError(Exception):
    """A request the agent refuses; ``kind`` is sent back to the node (``protocol.ErrorKind`` values)."""

    def __init__(self, message: str, kind: str = ErrorKind.INVALID) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class RunConfig:
    """Who runs user processes and where: the part of the agent's configuration jobs need."""

    workspace: str = GUEST_WORKSPACE
    uid: int | None = 1000
    gid: int | None = 1000
    home: str = "/home/user"
    user: str = "user"

    def owner(self) -> tuple[int, int] | None:
        """uid/gid that files written for the user get (None: leave as the agent's own)."""
        if self.uid is None or os.getuid() == self.uid:
            return None
        return (self.uid, self.gid if self.gid is not None else self.uid)

    def map_path(self, path: str) -> str:
        """Translate a guest path under /workspace to this agent's workspace folder."""
        norm = os.path.normpath(path)
        if norm == GUEST_WORKSPACE or norm.startswith(GUEST_WORKSPACE + "/"):
            return self.workspace + norm[len(GUEST_WORKSPACE) :]
        return norm


def base_env(config: RunConfig) -> dict[str, str]:
    return {
        "HOME": config.home,
        "USER": config.user,
        "LOGNAME": config.user,
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
    }


def _user_kwargs(config: RunConfig) -> dict[str, Any]:
    if config.uid is not None and os.getuid() != config.uid:
        return {"user": config.uid, "group": config.gid, "extra_groups": []}
    return {}


RUNAS = "/usr/local/libexec/sheesh-runas"
"""The image's static ``sheesh-runas UID GID PROGRAM ARGS``: the exec user is taken on by the program the child
runs, not by the child itself (source and reasons: ``sheesh/image/files/runas.c``)."""
SETPRIV = shutil.which("setpriv")
"""util-linux's ``setpriv``, the same where the image has no ``sheesh-runas`` (an agent on a host)."""


def _as_user(config: RunConfig, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``argv`` run as the exec user through ``setpriv`` where there is one, so ``Popen`` may use vfork.
    Switching users in the child itself makes Popen fork the whole agent instead, and every page the agent
    writes afterwards faults once (exec ``true`` back to back p50 42 -> 33 ms, p90 65 -> 41 ms under TCG)."""
    switch = _user_kwargs(config)
    if not switch or SETPRIV is None:
        return argv, switch
    return [SETPRIV, f"--reuid={config.uid}", f"--regid={config.gid}", "--clear-groups", *argv], {}


def _runas(config: RunConfig, cgroup: JobCgroup | None, argv: list[str]) -> list[str] | None:
    """``argv`` started by ``sheesh-runas`` (in a VM): as the exec user, in ``cgroup`` and the workspace; None
    where there is no ``sheesh-runas`` or no user to switch to. It starts in ~3 ms where ``setpriv`` takes ~7
    (dynamic linking and a locale): a warm shell is ready that much sooner after the job before it."""
    if not _user_kwargs(config) or not os.access(RUNAS, os.X_OK):
        return None
    ids = [str(config.uid), str(config.gid if config.gid is not None else config.uid)]
    joins = ["-c", cgroup.path] if cgroup is not None else []
    return [RUNAS, *joins, "-d", config.workspace, *ids, *argv]


@dataclass
class Shell:
    """A login shell waiting for one job, already in its own cgroup (when the guest has cgroups). Its output
    goes to two pipes (``out_fd``, ``err_fd``: our read ends), or to a terminal (both None)."""

    proc: Process
    job_fd: int  # our write end
    child_job_fd: int  # the number the shell reads it under
    out_fd: int | None
    err_fd: int | None
    cgroup: JobCgroup | None


def spawn_shell(
    config: RunConfig, cgroups: ExecCgroups | None, *, stdin_fd: int | None = None, tty: str | None = None
) -> Shell:
    """Start a login shell as the exec user that sources its job from a pipe, then evals ``__sheesh_cmd``.
    Its stdin is ``stdin_fd`` (default /dev/null). With ``tty`` (a pseudo-terminal's path, owned by the exec
    user) the shell opens it as stdin, stdout and stderr: as a session leader without one, that makes it the
    shell's controlling terminal."""
    job_r, job_w = os.pipe()
    pipes: list[int] = [] if tty else [*os.pipe(), *os.pipe()]  # out_r, out_w, err_r, err_w
    if _user_kwargs(config):  # the shell reopens the job pipe by path: it must own it
        os.fchown(job_r, config.uid or 0, config.gid or 0)
    if tty:
        redirect, passed = f"exec 0<>{shlex.quote(tty)} 1>&0 2>&0", [job_r]
    else:
        out_w, err_w = pipes[1], pipes[3]
        redirect, passed = f"exec 1>&{out_w} 2>&{err_w} {out_w}>&- {err_w}>&-", [job_r, out_w, err_w]
    boot = f'{redirect}; . /proc/self/fd/{job_r}; eval -- "unset __sheesh_cmd; $__sheesh_cmd"'
    cgroup: JobCgroup | None = None
    proc: Process
    try:
        if cgroups is not None:
            cgroup = cgroups.new()
        shell = ["bash", "-l", "-c", boot]
        if (runas := _runas(config, cgroup, shell)) is not None:  # also joins the cgroup: nothing left to do
            proc = spawned.spawn(runas, base_env(config), stdin_fd=stdin_fd, keep_fds=passed)
        else:
            argv, switch = _as_user(config, shell)
            proc = subprocess.Popen(
                argv,
                cwd=config.workspace,
                env=base_env(config),
                stdin=subprocess.DEVNULL if stdin_fd is None else stdin_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=tuple(passed),
                start_new_session=True,
                **switch,
            )
            if cgroup is not None:
                with contextlib.suppress(OSError):  # the shell died already: the job will see it
                    cgroup.add(proc.pid)
    except BaseException:
        for fd in (job_r, job_w, *pipes):
            os.close(fd)
        if cgroup is not None and cgroups is not None:
            cgroups.release(cgroup)
        raise
    for fd in passed:
        os.close(fd)
    if tty:
        return Shell(proc, job_w, job_r, None, None, cgroup)
    return Shell(proc, job_w, job_r, pipes[0], pipes[2], cgroup)


def send_job(shell: Shell, cwd: str, env: dict[str, str], cmd: str) -> None:
    """Write the job the shell waits for (a shell that died before reading it: its exit status says so), then
    close the pipe. Plain ``os.write``: a file object's code would run cold on every job, ~0.3 ms under
    emulation."""
    data = memoryview(job_script(shell.child_job_fd, cwd, env, cmd))
    try:
        while data:
            data = data[os.write(shell.job_fd, data) :]
    except BrokenPipeError:
        pass
    finally:
        os.close(shell.job_fd)


REFILL_NICE = 19
"""Niceness of warm shells while they start and wait: a back-to-back job never waits behind a refill."""


def renice(shell: Shell, nice: int, *, threads: bool = True) -> None:
    """Set the niceness of a waiting shell, each of its threads (only as root: raising it back needs the
    privilege). Threads take their niceness from the thread that starts them: a program the shell ``exec``-s
    after this starts all of its threads at ``nice``. ``threads=False``: only its first thread, all a waiting
    ``bash`` has (listing the threads is most of the cost)."""
    if os.geteuid() != 0:
        return
    pid = shell.proc.pid
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")] if threads else [pid]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)


class WarmShells:
    """Shells started ahead of time (``size`` ready at once), refilled after each job."""

    def __init__(self, config: RunConfig, size: int = 2, cgroups: ExecCgroups | None = None) -> None:
        self.config = config
        self.size = size
        self.cgroups = cgroups
        self._ready: list[Shell] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._held = threading.local()
        threading.Thread(target=self._refill, daemon=True).start()
        self._wake.set()

    def _refill(self) -> None:
        if os.geteuid() == 0:  # this thread's forks and what they run start at REFILL_NICE, not only after renice
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFILL_NICE)
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    self._ready = [w for w in self._ready if w.proc.poll() is None]
                    if len(self._ready) >= self.size:
                        break
                try:
                    shell = spawn_shell(self.config, self.cgroups)
                except OSError:
                    time.sleep(1)
                    continue
                with self._lock:
                    self._ready.append(shell)

    def take(self) -> Shell | None:
        """A ready shell, or None. Call ``refill`` once the job is done (refilling during the job would
        compete with it for the CPU)."""
        with self._lock:
            while self._ready:
                candidate = self._ready.pop(0)
                if candidate.proc.poll() is None:
                    renice(candidate, 0, threads=False)
                    return candidate
        return None

    def refill(self) -> None:
        if getattr(self._held, "depth", 0):
            self._held.asked = True
            return
        self._wake.set()

    @contextlib.contextmanager
    def refills_after(self) -> Iterator[None]:
        """Refills asked for in this block (on this thread) start when it ends: the agent answers first, then
        forks the next shell (a fork holds the interpreter lock, so the answer would wait for it)."""
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            yield
        finally:
            self._held.depth -= 1
            if not self._held.depth and getattr(self._held, "asked", False):
                self._held.asked = False
                self._wake.set()

    def ready(self) -> int:
        with self._lock:
            return sum(1 for w in self._ready if w.proc.poll() is None)


def job_script(job_fd: int, cwd: str, env: dict[str, str], cmd: str) -> bytes:
    """What a shell sources: close the job pipe, cd, export, and set the command for the shell to ``eval``
    (so a syntax error in it behaves like ``bash -c``: exit status 2, nothing half-parsed)."""
    seed = int.from_bytes(os.urandom(2), "big")  # shells forked before a snapshot share RANDOM state
    lines = [f"exec {job_fd}<&-", f"RANDOM={seed}", f"cd -- {shlex.quote(cwd)} || exit 1"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"__sheesh_cmd={shlex.quote(cmd)}")
    return "\n".join(lines).encode() + b"\n"


def job_selector(fds: Iterable[int], pid: int) -> tuple[selectors.BaseSelector, int | None]:
    """A selector on a job's read ends ``fds`` (made non-blocking) and on a descriptor that becomes readable
    when its shell ``pid`` exits (``exit_watch``); that descriptor, None where the kernel has none."""
    sel = selectors.DefaultSelector()
    for fd in fds:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    exited = exit_watch(pid)
    if exited is not None:
        sel.register(exited, selectors.EVENT_READ)
    return sel, exited


def exit_watch(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` exits (a pidfd: a kill wakes a wait on it too);
    None before Linux 5.3 (the caller polls for the exit)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _read_into(fd: int, buf: bytearray, limit: int) -> tuple[bool, bool]:
    """Read what ``fd`` has into ``buf``, keeping at most ``limit`` bytes in it: (at EOF, some dropped)."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return False, False
    if not chunk:
        return True, False
    room = limit - len(buf)
    if room > 0:
        buf.extend(chunk[:room])
    return False, len(chunk) > room


def collect(
    proc: Process,
    out_fd: int,
    err_fd: int,
    deadline: float | None,
    limit: int,
    *,
    cgroup: JobCgroup | None = None,
) -> tuple[bool, bool, bytes, bytes]:
    """Read both pipes until EOF (or shortly after the shell exits); at ``deadline`` SIGKILL the process
    group and the job's cgroup. Closes both fds. Returns (timed_out, truncated, stdout, stderr).

    While the job runs this sleeps until output, the shell's exit (its pidfd) or the deadline: a long quiet
    job wakes the guest for nothing (polling for the exit every 50 ms cost a `sleep` in a VM 2.1 % of a host
    core under TCG, seven times an idle VM). A bare ``select.poll`` (a pipe it reports readable does not block
    a read): the ``selectors`` module's bookkeeping cost each exec ~0.8 ms of guest CPU under emulation."""
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = False
    timed_out = False
    poller = select.poll()
    for fd in (out_fd, err_fd):
        poller.register(fd, select.POLLIN)
    exited = exit_watch(proc.pid)
    if exited is not None:
        poller.register(exited, select.POLLIN)
    host = handoff.current()  # this thread reads the host's requests: more of them must not wait for this job
    if host is not None:
        poller.register(host.fd, select.POLLIN)
    reading = 2
    exited_at: float | None = None
    try:
        while reading:
            now = time.monotonic()
            if deadline is not None and now >= deadline and exited_at is None:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if cgroup is not None:
                    cgroup.kill()
                deadline = None
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            # background children may keep the pipes open: stop shortly after the shell itself is gone
            if exited_at is not None and now - exited_at > 0.05:
                break
            wait: float | None = 0.01 if exited_at is not None else (None if exited is not None else 0.05)
            if deadline is not None:
                wait = max(0.0, deadline - now) if wait is None else min(wait, max(0.0, deadline - now))
            for fd, _ in poller.poll(None if wait is None else math.ceil(wait * 1000)):
                if host is not None and fd == host.fd:
                    poller.unregister(fd)
                    host.fire()
                    continue
                if fd == exited:
                    poller.unregister(fd)  # the shell is gone: the next turn reaps it
                    continue
                eof, dropped = _read_into(fd, bufs[fd], limit)
                truncated = truncated or dropped
                if eof:
                    poller.unregister(fd)
                    reading -= 1
    finally:
        os.close(out_fd)
        os.close(err_fd)
        if exited is not None:
            os.close(exited)
    return timed_out, truncated, bytes(bufs[out_fd]), bytes(bufs[err_fd])


def run_job(
    config: RunConfig,
    shells: WarmShells | None,
    *,
    cwd: str,
    env: dict[str, str],
    cmd: str,
    timeout_ms: int | None,
    output_limit: int | None,
) -> dict[str, Any]:
    """Run ``cmd`` in a shell (warm if one is ready) as the exec user; ``stderr_bytes`` is left for the caller
    to decode. Background processes the job leaves keep running (and keep its cgroup) unless it timed out.
    Jobs get cgroups from the shell pool's (a job without a pool, on a host, has none)."""
    cgroups = shells.cgroups if shells is not None else None
    shell = shells.take() if shells is not None else None
    if shell is None:
        shell = spawn_shell(config, cgroups)
    send_job(shell, cwd, env, cmd)
    try:
        return wait_job(shell, cgroups, timeout_ms=timeout_ms, output_limit=output_limit)
    finally:
        if shells is not None:
            shells.refill()


def wait_job(
    shell: Shell, cgroups: ExecCgroups | None, *, timeout_ms: int | None, output_limit: int | None
) -> dict[str, Any]:
    """Collect the output of the job ``shell`` runs (already sent), wait for it, clean up after it."""
    assert shell.out_fd is not None and shell.err_fd is not None  # pipes: no tty asked for
    deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
    limit = int(output_limit or DEFAULT_OUTPUT_LIMIT)
    timed_out, truncated, out, err = collect(
        shell.proc, shell.out_fd, shell.err_fd, deadline, limit, cgroup=shell.cgroup
    )
    code = shell.proc.wait()
    if timed_out and shell.cgroup is not None:
        handoff.release()  # killing may take seconds: the host's other requests must not wait for it
        shell.cgroup.kill_and_wait()  # the answer says the job is over: so is everything it started
    if shell.cgroup is not None and cgroups is not None:
        cgroups.release(shell.cgroup)
    return {
        "exit_code": exit_status(code, timed_out),
        "stdout": out.decode(errors="replace"),
        "stderr_bytes": err,
        "timed_out": timed_out,
        "truncated": truncated,
    }


def exit_status(returncode: int, timed_out: bool) -> int:
    """A job's exit code as a shell reports it: 124 after a timeout, 128 + N when signal N ended it."""
    if timed_out:
        return EXIT_TIMEOUT
    return 128 - returncode if returncode < 0 else returncode


def user_env(env: object) -> dict[str, str]:
    """An exec's ``env`` object, checked: names are shell identifiers, values have no NUL byte."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise RequestError("env must be an object of strings")
    pairs = {str(k): str(v) for k, v in env.items()}
    if any(not ENV_NAME.match(k) or "\0" in v for k, v in pairs.items()):
        raise RequestError("invalid environment variable")
    return pairs


def env_list(pairs: list[str]) -> dict[str, str]:
    """run-ts/run-js ``env`` (``["K=V"]``) as a mapping."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.match(key) or "\0" in value:
            raise RequestError(f"env entries must be KEY=value: {pair!r}")
        env[key] = value
    return env


def job_of(config: RunConfig, req: dict[str, Any]) -> tuple[str, str]:
    """The checked ``cmd`` of an exec request and its working directory (mapped to this agent's workspace)."""
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or "\0" in cmd:
        raise RequestError("cmd must be a string without NUL bytes")
    cwd = config.map_path(str(req.get("cwd") or GUEST_WORKSPACE))
    if not os.path.isdir(cwd):
        raise RequestError(f"working directory {req.get('cwd') or GUEST_WORKSPACE} does not exist")
    return cmd, cwd


def run_exec(config: RunConfig, req: dict[str, Any], shells: WarmShells | None = None) -> dict[str, Any]:
    """Run ``cmd`` like ``bash -lc``; collect at most ``output_limit`` bytes per stream; kill the job on
    timeout."""
    cmd, cwd = job_of(config, req)
    reply = run_job(
        config,
        shells,
        cwd=cwd,
        env=user_env(req.get("env")),
        cmd=cmd,
        timeout_ms=req.get("timeout_ms"),
        output_limit=req.get("output_limit"),
    )
    reply["stderr"] = reply.pop("stderr_bytes").decode(errors="replace")
    return reply
