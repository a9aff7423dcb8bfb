"""The VM's SSH server (OpenSSH; root logs in by key only, see the image's ``sshd.conf``).

The host key is the VM's own: made at first boot, and made again (and the server restarted) whenever the
VM is restored from a snapshot, so clones of one template never share a host key. Key generation runs in a
thread so a restore is not slowed down; ``authorize`` waits for it. On a host (the fake VMM, tests) the same
files live under a folder standing for ``/`` and no daemon is run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
AUTHORIZED_KEYS = "root/.ssh/authorized_keys"
PID_FILE = "/run/sheesh-sshd.pid"
SSHD = "/usr/sbin/sshd"
MAX_KEYS = 64
MAX_KEY_CHARS = 16 * 1024
READY_TIMEOUT_S = 25.0
LISTEN_TIMEOUT_S = 10.0
SSH_PORT = 22


class SshError(Exception):
    """The SSH server could not be prepared, or the keys sent are malformed."""


class SshServer:
    def __init__(self, root: str = "/", *, run_daemon: bool = True) -> None:
        self.root = Path(root)
        self.run_daemon = run_daemon
        self._cond = threading.Condition()
        self._wanted = 0
        """Preparations asked for; ``_done`` is the newest one finished (each covers all before it)."""
        self._done = 0
        self._regenerate = False
        self._work = threading.Lock()
        self._error: str | None = None
        self._daemon: subprocess.Popen[bytes] | None = None

    def start(self, *, regenerate: bool) -> None:
        """(Re)start in the background: a new host key first when ``regenerate`` or when there is none."""
        with self._cond:
            self._wanted += 1
            self._regenerate = self._regenerate or regenerate
        threading.Thread(target=self._prepare, daemon=True, name="sshd").start()

    def _prepare(self) -> None:
        with self._work:
            with self._cond:
                if self._done >= self._wanted:
                    return  # a preparation that started later already did it
                serving, regenerate, self._regenerate = self._wanted, self._regenerate, False
            error = None
            try:
                key = self.root / HOST_KEY
                if regenerate or not key.exists():
                    key.parent.mkdir(parents=True, exist_ok=True)
                    for old in (key, key.with_name(key.name + ".pub")):
                        old.unlink(missing_ok=True)
                    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@sheesh", "-f", str(key)]
                    subprocess.run(argv, check=True, capture_output=True, timeout=60)
                if self.run_daemon:
                    self._restart_daemon()
            except (OSError, subprocess.SubprocessError, SshError) as exc:
                error = f"cannot start the SSH server: {exc}"
            with self._cond:
                self._done, self._error = serving, error
                self._cond.notify_all()

    def _restart_daemon(self) -> None:
        """Run ``sshd -D`` as our child (its PID also in ``PID_FILE``, so an agent started after a crash of
        this one stops it), and wait until it listens."""
        if self._daemon is not None:
            _end(self._daemon.pid, self._daemon)
        with contextlib.suppress(OSError, ValueError):
            stale = int(Path(PID_FILE).read_text().strip())
            if b"sshd" in Path(f"/proc/{stale}/cmdline").read_bytes():
                _end(stale, None)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        devnull = subprocess.DEVNULL
        self._daemon = subprocess.Popen(
            [SSHD, "-D"], stdin=devnull, stdout=devnull, stderr=devnull, start_new_session=True
        )
        Path(PID_FILE).write_text(f"{self._daemon.pid}\n")
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not _listening(SSH_PORT):
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                raise SshError(f"sshd did not start listening (exit status {self._daemon.poll()})")
            time.sleep(0.02)

    def authorize(self, keys: object) -> dict[str, list[str]]:
        """Make ``keys`` root's authorized keys; the host public keys."""
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise SshError(f"keys must be a list of at most {MAX_KEYS} public keys")
        for key in keys:
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or any(c in key for c in "\n\r\0"):
                raise SshError("each key must be one line of at most 16 KiB")
        with self._cond:
            if not self._cond.wait_for(lambda: self._done >= self._wanted, READY_TIMEOUT_S):
                raise SshError("the SSH server is still being prepared")
            if self._error:
                raise SshError(self._error)
        folder = self.root / "root/.ssh"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / "authorized_keys.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(k + "\n" for k in keys))
        os.replace(tmp, self.root / AUTHORIZED_KEYS)
        pub = self.root / (HOST_KEY + ".pub")
        return {"hostkeys": [line for line in pub.read_text().splitlines() if line.strip()]}


def _end(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    """Stop the sshd listener ``pid`` (sessions already open keep running)."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    if child is not None:
        try:
            child.wait(3)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
