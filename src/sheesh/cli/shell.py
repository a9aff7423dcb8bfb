"""``sheesh vm shell``: this terminal on an interactive PTY session in a VM (the streaming exec API, ``pty``).

The terminal is put in raw mode; keys go to the VM as they are typed, output comes back unchanged; the window
size follows the terminal (SIGWINCH). ``Ctrl-]`` detaches (the shell is killed); the command's exit status
is the CLI's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType

from sheesh.cli.console import ESCAPE, raw_terminal
from sheesh.client import ExecSession, StreamOutput, Vm
from sheesh.client.errors import SheeshClientError


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on ``fd`` (24 x 80 when it is not one)."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return size.lines, size.columns


def _pump_keys(session: ExecSession, stdin_fd: int, detached: threading.Event) -> None:
    """Keys to the session until Ctrl-], the end of input, or the session's end."""
    try:
        while data := os.read(stdin_fd, 4096):
            head, escaped, _ = data.partition(ESCAPE)
            if head:
                session.send(head)
            if escaped:
                detached.set()
                session.kill()
                return
        session.close_stdin()
    except (OSError, SheeshClientError):
        return


class _Resizes:
    """Sends the terminal's size to the session after each SIGWINCH, from a thread of its own.

    The handler runs on the main thread between two of its steps, possibly inside the session's receive with its
    connection's lock held (sending from there waited for that lock for ever), and possibly inside itself: a
    second SIGWINCH (the kernel's and a ``kill`` together) runs the handler again before the first returns. So it
    takes no lock at all (a ``threading.Event``'s did, and the nested call waited for it for ever: the shell
    froze): it writes a byte to a pipe the thread reads (the self-pipe trick)."""

    def __init__(self, session: ExecSession, fd: int) -> None:
        self.session = session
        self.fd = fd
        self._stopped = False
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)
        threading.Thread(target=self._follow, daemon=True).start()

    def signalled(self, _sig: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the thread has wake-ups enough
            os.write(self._write_end, b"w")

    def stop(self) -> None:
        """After the handler is gone: the thread ends and closes the pipe."""
        self._stopped = True
        self.signalled(0, None)

    def _follow(self) -> None:
        try:
            while os.read(self._read_end, 512) and not self._stopped:  # signals that came together: one resize
                with contextlib.suppress(SheeshClientError):
                    self.session.resize(*terminal_size(self.fd))
        finally:
            os.close(self._read_end)
            os.close(self._write_end)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` may take part of it (a terminal, a signal in between)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_shell(vm: Vm, cmd: str, stdin_fd: int | None = None, stdout_fd: int | None = None) -> int:
    """Attach the terminal to ``cmd`` on a PTY in ``vm``; returns its exit status (130 when detached)."""
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    rows, cols = terminal_size(stdout_fd)
    detached = threading.Event()
    with vm.pty(cmd, rows=rows, cols=cols) as session:
        resizes = _Resizes(session, stdout_fd)
        previous = signal.signal(signal.SIGWINCH, resizes.signalled) if os.isatty(stdout_fd) else None
        try:
            with raw_terminal(stdin_fd):
                threading.Thread(target=_pump_keys, args=(session, stdin_fd, detached), daemon=True).start()
                for event in session:
                    if isinstance(event, StreamOutput):
                        _write_all(stdout_fd, event.data)
        finally:
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
            resizes.stop()
        result = session.result
    if detached.is_set():
        return 130
    return result.exit_code if result is not None else 1
