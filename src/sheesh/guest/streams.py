"""Streaming jobs (standard library only): a command whose output is sent as it is produced, that reads stdin
from the host, takes signals and, on request, runs on a pseudo-terminal.

One ``StreamJob`` per ``exec_start``. Its pump thread reads the job's stdout and stderr (or the terminal) and
sends each chunk as a ``StreamOutput`` frame, then one ``StreamExit``. At most ``protocol.STREAM_WINDOW`` bytes
are in flight: the pump stops reading while the host has not acknowledged them (``exec_ack``), so the program
blocks on a full pipe rather than the agent buffering without bound. Without a terminal each stream is capped
at ``output_limit`` bytes like exec (the rest is read and dropped); a terminal session is not capped.

The job runs in a fresh login shell in a cgroup of its own (``execution.spawn_shell``); KILL, a timeout, and a
host that goes away kill the whole cgroup.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import signal
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

from sheesh.guest.cgroups import ExecCgroups
from sheesh.guest.execution import (
    RequestError,
    RunConfig,
    Shell,
    exit_status,
    job_of,
    job_selector,
    send_job,
    spawn_shell,
    user_env,
)
from sheesh.guest.protocol import STREAM_WINDOW, ErrorKind, StreamEventKind

SIGNALS: dict[str, signal.Signals] = {
    name: getattr(signal, "SIG" + name) for name in ("KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2")
}
MAX_ROWS_COLS = 1000
READ_CHUNK = 64 * 1024
EXIT_GRACE_S = 0.05
"""After the shell exits, output still arriving is read until the pipes stay quiet this long (background
children may hold them open for ever)."""
EXIT_READ_MAX_S = 1.0
"""...and for at most this long."""

Send = Callable[[dict[str, Any]], None]


def _size(req: dict[str, Any]) -> tuple[int, int]:
    rows, cols = req.get("rows", 24), req.get("cols", 80)
    if not all(isinstance(v, int) and 1 <= v <= MAX_ROWS_COLS for v in (rows, cols)):
        raise RequestError(f"rows and cols must be integers from 1 to {MAX_ROWS_COLS}")
    return rows, cols


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class StreamJob:
    """One streaming job; ``send`` writes frames to the host, ``on_end`` is called once the exit was sent."""

    def __init__(
        self,
        config: RunConfig,
        cgroups: ExecCgroups | None,
        req: dict[str, Any],
        send: Send,
        on_end: Callable[[str], None],
    ) -> None:
        self.sid = str(req["stream"])
        cmd, cwd = job_of(config, req)
        env = user_env(req.get("env"))
        self.pty = bool(req.get("pty"))
        timeout_ms = req.get("timeout_ms")
        limit = req.get("output_limit")
        self._limit: int | None = None if self.pty or not limit else int(limit)
        self._deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        self._send = send
        self._on_end = on_end
        self._cond = threading.Condition()
        self._unacked = 0
        self._gone = False
        self._killed = False
        self._stdin_lock = threading.Lock()
        self.master: int | None = None
        self._slave: int | None = None
        """Our own end of the terminal, held until the job is over: with no end open, reading the master
        fails (EIO), and the shell opens its end by name only once it runs."""
        self._stdin: int | None = None
        if self.pty:
            rows, cols = _size(req)
            env.setdefault("TERM", "xterm-256color")
            self.master, self._slave = os.openpty()
            try:
                _set_size(self.master, rows, cols)
                tty = os.ttyname(self._slave)
                if config.owner() is not None:
                    uid, gid = config.owner() or (0, 0)
                    os.fchown(self._slave, uid, gid)
                self.shell = spawn_shell(config, cgroups, tty=tty)
            except BaseException:
                os.close(self.master)
                os.close(self._slave)
                raise
            self._stdin = self.master
        else:
            stdin_r, self._stdin = os.pipe()
            try:
                self.shell = spawn_shell(config, cgroups, stdin_fd=stdin_r)
            except BaseException:
                os.close(self._stdin)
                raise
            finally:
                os.close(stdin_r)
        self.cgroups = cgroups
        send_job(self.shell, cwd, env, cmd)
        threading.Thread(target=self._pump, name=f"stream-{self.sid[:8]}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.shell.proc.pid

    # --- from the host ------------------------------------------------------------------------------------
    def write(self, data: bytes, eof: bool) -> None:
        """Write to the job's stdin (blocks while the program does not read); ``eof`` closes it (on a
        terminal: sends its EOF character, as Ctrl-D does)."""
        with self._stdin_lock:
            fd = self._stdin
            if fd is None:
                if data:
                    raise RequestError("stdin of this job is closed")
                return
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view) :]
                if eof and self.pty:
                    os.write(fd, termios.tcgetattr(fd)[6][termios.VEOF])
            except OSError as exc:  # the program closed its stdin or ended
                raise RequestError(f"stdin of this job is closed ({exc.strerror})", ErrorKind.INVALID) from None
            if eof and not self.pty:
                os.close(fd)
                self._stdin = None

    def signal(self, name: str) -> None:
        sig = SIGNALS.get(str(name).upper().removeprefix("SIG"))
        if sig is None:
            raise RequestError(f"unknown signal {name!r}: one of {', '.join(SIGNALS)}")
        if sig == signal.SIGKILL:
            self.kill()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def resize(self, rows: int, cols: int) -> None:
        if self.master is None:
            raise RequestError("this job has no terminal to resize (start it with pty)")
        rows, cols = _size({"rows": rows, "cols": cols})
        _set_size(self.master, rows, cols)  # the kernel tells the foreground programs (SIGWINCH)

    def ack(self, count: int) -> None:
        with self._cond:
            self._unacked = max(0, self._unacked - int(count))
            self._cond.notify()

    def kill(self) -> None:
        """SIGKILL the job and everything it started."""
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.shell.cgroup is not None:
            self.shell.cgroup.kill()

    def host_gone(self) -> None:
        """The host disconnected: nobody reads this job's output any more."""
        with self._cond:
            self._gone = True
            self._cond.notify()
        self.kill()

    # --- the pump ------------------------------------------------------------------------------------------
    def _readers(self) -> dict[int, int]:
        """Our read ends and the stream number (1, 2) each is."""
        if self.master is not None:
            return {self.master: 1}
        shell: Shell = self.shell
        assert shell.out_fd is not None and shell.err_fd is not None
        return {shell.out_fd: 1, shell.err_fd: 2}

    def _pump(self) -> None:
        readers = self._readers()
        sent = dict.fromkeys(readers.values(), 0)
        truncated = timed_out = False
        exited_at: float | None = None
        sel, exited = job_selector(readers, self.shell.proc.pid)  # the pidfd wakes the pump when the shell ends
        reading = len(readers)
        try:
            while reading:
                now = time.monotonic()
                if self._deadline is not None and now >= self._deadline:
                    timed_out, self._deadline = True, None
                    self.kill()
                if exited_at is None and self.shell.proc.poll() is not None:
                    exited_at = now
                with self._cond:
                    if self._gone:
                        break
                    if self._unacked >= STREAM_WINDOW and exited_at is None:  # (an exited shell writes no more)
                        self._cond.wait(0.05)
                        continue
                if exited_at is not None and now - exited_at > EXIT_READ_MAX_S:
                    break
                ready = sel.select(self._wait(exited_at, exited is not None, now))
                if not ready and exited_at is not None:
                    break
                for key, _ in ready:
                    fd = int(key.fd)
                    if fd == exited:
                        sel.unregister(fd)  # the next turn reaps the shell
                        continue
                    try:
                        chunk = os.read(fd, READ_CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:  # EIO: the terminal is gone
                        chunk = b""
                    if not chunk:
                        sel.unregister(fd)
                        reading -= 1
                        continue
                    truncated = self._forward(readers[fd], chunk, sent) or truncated
        finally:
            sel.close()
            if exited is not None:
                os.close(exited)
            self._finish(timed_out, truncated)

    def _wait(self, exited_at: float | None, exit_watched: bool, now: float) -> float | None:
        """How long the pump may sleep: briefly once the shell is gone (its last output), else until output,
        its exit or its deadline where the shell's exit wakes it (a pidfd), else a poll every 0.2 s."""
        if exited_at is not None:
            return EXIT_GRACE_S
        if not exit_watched:
            return 0.2
        return None if self._deadline is None else max(0.0, self._deadline - now)

    def _forward(self, number: int, chunk: bytes, sent: dict[int, int]) -> bool:
        """Send a chunk of stream ``number`` (what fits under the limit); True when some of it was dropped."""
        dropped = False
        if self._limit is not None:
            room = self._limit - sent[number]
            if len(chunk) > room:
                dropped, chunk = True, chunk[: max(0, room)]
        if chunk:
            sent[number] += len(chunk)
            with self._cond:
                self._unacked += len(chunk)
            self._emit({"event": StreamEventKind.OUTPUT, "fd": number, "data": base64.b64encode(chunk).decode()})
        return dropped

    def _finish(self, timed_out: bool, truncated: bool) -> None:
        if self.shell.proc.poll() is None and (self._gone or self._killed):
            self.kill()
        code = self.shell.proc.wait()
        if self._killed and self.shell.cgroup is not None:
            self.shell.cgroup.kill_and_wait()
        for fd in [*self._readers(), *([self._slave] if self._slave is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        with self._stdin_lock:
            if self._stdin is not None and self._stdin != self.master:
                os.close(self._stdin)
            self._stdin = None
        if self.shell.cgroup is not None and self.cgroups is not None:
            self.cgroups.release(self.shell.cgroup)
        self._emit(
            {
                "event": StreamEventKind.EXIT,
                "exit_code": exit_status(code, timed_out),
                "timed_out": timed_out,
                "truncated": truncated,
            }
        )
        self._on_end(self.sid)

    def _emit(self, frame: dict[str, Any]) -> None:
        if self._gone:  # nobody listens (and a port without a host blocks writers until one connects)
            return
        with contextlib.suppress(OSError):
            self._send({"stream": self.sid, **frame})


class StreamJobs:
    """The streaming jobs of one agent, by stream id."""

    def __init__(self, config: RunConfig, cgroups: ExecCgroups | None, send: Send) -> None:
        self.config = config
        self.cgroups = cgroups
        self._send = send
        self._jobs: dict[str, StreamJob] = {}
        self._lock = threading.Lock()

    def start(self, req: dict[str, Any]) -> dict[str, Any]:
        sid = str(req.get("stream"))
        with self._lock:
            if sid in self._jobs:
                raise RequestError(f"stream {sid} exists already")
        job = StreamJob(self.config, self.cgroups, req, self._send, self._ended)
        with self._lock:
            self._jobs[sid] = job
        return {"pid": job.pid}

    def _ended(self, sid: str) -> None:
        with self._lock:
            self._jobs.pop(sid, None)

    def get(self, sid: object) -> StreamJob:
        with self._lock:
            job = self._jobs.get(str(sid))
        if job is None:
            raise RequestError(f"no stream {sid}", ErrorKind.NOT_FOUND)
        return job

    def host_gone(self) -> None:
        """Kill every job: their host disconnected."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.host_gone()

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
