"""Starting a program with ``posix_spawn`` and the handle the agent keeps for it (standard library only).

The agent starts a login shell for every exec (``execution.spawn_shell``). ``subprocess.Popen`` runs ~1 ms of
Python per start under emulation on top of the ``vfork``; ``os.posix_spawn`` does the same start (``clone`` with
``CLONE_VFORK``, then the file actions, the new session and the default signal dispositions in the child) from
C. ``Child`` is the part of ``Popen``'s interface the agent uses on what it started: ``pid``, ``poll``, ``wait``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Protocol

RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
"""Ignored by Python, so by every child it starts unless reset (``Popen``'s ``restore_signals``)."""


class Process(Protocol):
    """A child process of the agent: a ``subprocess.Popen`` or a ``Child``."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Child:
    """A process started by ``spawn``; reaped by ``poll`` or ``wait`` (from any thread, once), its exit status
    as ``Popen`` gives it (``-N`` when signal N ended it)."""

    def __init__(self, pid: int, argv: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(argv)
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status once the process ended; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if timeout is None:
            with self._lock:
                self._reap(0)
            assert self.returncode is not None
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return code

    def _reap(self, flags: int) -> None:
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere (no status left to tell)
            self.returncode = 255
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)


def spawn(
    argv: Sequence[str], env: dict[str, str], *, stdin_fd: int | None = None, keep_fds: Sequence[int] = ()
) -> Child:
    """Start ``argv[0]`` (an absolute path) in a new session with ``env``: stdin ``stdin_fd`` (default
    /dev/null), stdout and stderr /dev/null, and ``keep_fds`` open under their numbers (the agent's other
    descriptors are close-on-exec). Raises ``OSError`` when the program cannot be started."""
    actions: list[tuple[int, int, int] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
        if stdin_fd is None
        else (os.POSIX_SPAWN_DUP2, stdin_fd, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep_fds]  # same number: clears close-on-exec
    pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions, setsid=True, setsigdef=RESTORED_SIGNALS)
    return Child(pid, argv)
