"""``spawned``: programs the guest agent starts with posix_spawn, and the Popen-like handle it keeps."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from sheesh.guest.spawned import Child, spawn

SH = "/bin/bash"  # (dash reads no descriptor above 9 in a redirection)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def test_the_child_gets_a_session_the_kept_pipe_default_signals_and_dev_null() -> None:
    r, w = os.pipe()  # close-on-exec, as every descriptor the agent opens
    other_r, other_w = os.pipe()
    script = (
        f"exec >&{w}; echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; "
        "grep -E '^Sig(Ign|Blk):' /proc/self/status; read line || echo stdin-eof; "
        f"ls /proc/self/fd/{other_w} 2>/dev/null || echo no-other"
    )
    child = spawn([SH, "-c", script], {"PATH": "/usr/bin:/bin"}, keep_fds=[w])
    os.close(w)
    os.close(other_w)
    os.close(other_r)
    out = _read_all(r).splitlines()
    assert child.wait() == 0
    sid, pid = (part.split("=")[1] for part in out[0].split())
    assert sid == pid  # a session of its own, as Popen(start_new_session=True)
    ignored = int(next(line for line in out if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1))
    assert out[-2:] == ["stdin-eof", "no-other"]


def test_stdin_is_the_given_descriptor() -> None:
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    child = spawn([SH, "-c", f"cat >&{out_w}"], {}, stdin_fd=stdin_r, keep_fds=[out_w])
    os.close(stdin_r)
    os.close(out_w)
    os.write(stdin_w, b"hello")
    os.close(stdin_w)
    assert _read_all(out_r) == "hello"
    assert child.wait() == 0


def test_exit_statuses_as_popen_gives_them() -> None:
    assert spawn([SH, "-c", "exit 3"], {}).wait() == 3
    killed = spawn([SH, "-c", "sleep 30"], {})
    assert killed.poll() is None
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while killed.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert killed.returncode == -signal.SIGKILL
    assert killed.wait() == -signal.SIGKILL  # reaped once, answered again


def test_wait_with_a_timeout() -> None:
    child = spawn([SH, "-c", "sleep 30"], {})
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    assert 0.15 < time.monotonic() - start < 2
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL


def test_a_program_that_cannot_start_raises() -> None:
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/program"], {})


def test_a_child_reaped_elsewhere_does_not_hang_its_waiter() -> None:
    child = Child(spawn([SH, "-c", "exit 0"], {}).pid, [SH])
    os.waitpid(child.pid, 0)
    assert child.wait() == 255
