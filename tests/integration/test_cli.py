"""The CLI (``sheesh login|vm|snapshot|image|key|user``) as a user runs it: real processes against a real server
(uvicorn, the fake VMM); ``sheesh vm shell`` on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

SHEESH = [sys.executable, "-c", "from sheesh.cli.main import main; main()"]
CONTROLLING_TTY = [
    sys.executable,
    "-c",
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])",
]
"""Make stdin (a terminal) the controlling terminal of a new session, then run the command: a login's job."""


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, input: bytes | None = None, code: int = 0) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run([*SHEESH, *args], env=self.env, input=input, capture_output=True, timeout=60, check=False)
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def cli(served_url: str, tmp_path: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHEESH_")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"}
    cli = Cli(env)
    cli.run("login", "--url", served_url, "--api-key", "wrong", code=1)
    done = cli.run("login", "--url", served_url, "--api-key", "test-key")
    assert b"as admin" in done.stderr
    assert oct((tmp_path / "config" / "sheesh" / "config.json").stat().st_mode & 0o777) == "0o600"
    return cli


def test_vms_from_the_command_line(cli: Cli, tmp_path: Path) -> None:
    vm = cli.json("vm", "create", "--mem", "128", "--timeout", "3600")
    assert vm["state"] == "RUNNING" and vm["expires_at"]
    vm_id = vm["id"]
    assert [v["id"] for v in cli.json("vm", "ls")] == [vm_id]
    assert vm_id in cli.run("vm", "ls").stdout.decode(), "a table for humans"
    assert cli.run("vm", "exec", vm_id, "--", "echo", "hi", "there").stdout == b"hi there\n"
    cli.run("vm", "exec", vm_id, "--", "echo oops >&2; exit 7", code=7)
    assert cli.run("vm", "exec", vm_id, "--", "cat", input=b"piped\n").stdout == b"piped\n"
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "a.txt").write_text("from the host\n")
    cli.run("vm", "cp", str(tmp_path / "up"), f"{vm_id}:/workspace/up")
    cli.run("vm", "exec", vm_id, "--", "cp up/a.txt up/b.txt")
    cli.run("vm", "cp", f"{vm_id}:/workspace/up", str(tmp_path / "down"))
    assert (tmp_path / "down" / "b.txt").read_text() == "from the host\n"
    cli.run("vm", "cp", "here", "there", code=2)
    assert cli.json("vm", "timeout", vm_id)["expires_at"] is None
    cli.run("vm", "pause", vm_id)
    assert cli.json("vm", "ls")[0]["state"] == "PAUSED"
    cli.run("vm", "resume", vm_id)
    snap = cli.json("snapshot", "create", vm_id)
    assert [s["id"] for s in cli.json("snapshot", "ls")] == [snap["id"]]
    clones = cli.json("vm", "fork", vm_id, "-n", "2")
    assert len(clones) == 2
    cli.run("vm", "rm", *(c["id"] for c in clones))
    cli.run("snapshot", "rm", snap["id"])
    assert b"not found" in cli.run("snapshot", "rm", snap["id"], code=1).stderr
    cli.run("vm", "logs", vm_id, "--tail", "5")
    cli.run("vm", "rm", vm_id)
    assert cli.json("vm", "ls") == []
    done = cli.run("vm", "exec", vm_id, "--", "true", code=1)
    assert b"not found" in done.stderr


def test_keys_users_images(cli: Cli) -> None:
    key = cli.run("key", "create", "--label", "ci").stdout.decode().strip()
    assert key and "ci" in [k["label"] for k in cli.json("key", "ls")]
    env = {**cli.env, "SHEESH_API_KEY": key}  # the environment wins over the saved login
    assert subprocess.run([*SHEESH, "vm", "ls", "--json"], env=env, capture_output=True, check=True).stdout
    env["SHEESH_API_KEY"] = "nope"
    assert subprocess.run([*SHEESH, "vm", "ls"], env=env, capture_output=True, check=False).returncode == 1
    cli.env["SHEESH_NEW_PASSWORD"] = "a long enough password"
    user = cli.json("user", "create", "carol")
    assert user["role"] == "user"
    assert cli.json("user", "role", user["id"], "admin")["role"] == "admin"
    cli.run("user", "rm", user["id"])
    assert "carol" not in [u["username"] for u in cli.json("user", "ls")]
    assert [i["id"] for i in cli.json("image", "ls")] == ["img-test"]


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(fd: int, marker: bytes, timeout_s: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        assert time.monotonic() < deadline, f"{marker!r} not in {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_shell_on_a_real_terminal_follows_its_size(cli: Cli) -> None:
    vm_id = cli.json("vm", "create", "--mem", "128")["id"]
    master, slave = pty.openpty()
    _set_size(slave, 31, 101)
    proc = subprocess.Popen(
        [*CONTROLLING_TTY, *SHEESH, "vm", "shell", vm_id, "--cmd", "bash --norc -i"],
        env=cli.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        os.write(master, b"stty size; tty\r")  # typed ahead of the shell: kept for it
        assert b"31 101" in _read_until(master, b"/dev/pts/")
        _set_size(master, 45, 120)  # the kernel tells the CLI (SIGWINCH): it resizes the VM's terminal
        os.killpg(proc.pid, signal.SIGWINCH)
        time.sleep(0.5)
        os.write(master, b"stty size\r")
        _read_until(master, b"45 120")
        os.write(master, b"exit 5\r")
        assert proc.wait(20) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        cli.run("vm", "rm", vm_id)
