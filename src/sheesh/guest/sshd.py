"""The VM's SSH server (OpenSSH; root logs in by key only, see the image's ``sshd.conf``).

The host key is the VM's own: made at its first ``authorize`` (by the host, which sends it along, or here),
and forgotten whenever the VM is restored from a snapshot, so clones of one template never share a host key.
Nothing runs before the first ``authorize``: VMs that never use SSH pay nothing for it. On a host (the fake
VMM, tests) the same files live under a folder standing for ``/`` and no daemon is run.
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
LISTEN_TIMEOUT_S = 10.0
SSH_PORT = 22


class SshError(Exception):
    """The SSH server could not be prepared, or the keys sent are malformed."""


class SshServer:
    """Prepared on demand: nothing runs until the first ``authorize`` (most VMs never use SSH, and a restore
    must not pay for it). ``forget`` (after every restore) drops the host key, so each clone gets its own at
    its first ``authorize``: the one the host sent with it (made outside the slow guest), else one made here."""

    def __init__(self, root: str = "/", *, run_daemon: bool = True) -> None:
        self.root = Path(root)
        self.run_daemon = run_daemon
        self._lock = threading.Lock()
        self._daemon: subprocess.Popen[bytes] | None = None
        self._keyed = self._key.exists()
        """Whether a host key may be on disk (made since the agent started, or found then)."""

    @property
    def _key(self) -> Path:
        return self.root / HOST_KEY

    def forget(self) -> None:
        """The machine was restored (maybe cloned): its host key is not its own any more. Remove it and stop the
        listener (sessions already open go on); the next ``authorize`` makes a new one. A VM that never used
        SSH has nothing to forget: that costs no syscall (every clone of a template calls this)."""
        with self._lock:
            if not self._keyed and self._daemon is None:
                return
            self._keyed = False
            for old in (self._key, self._key.with_name(self._key.name + ".pub")):
                old.unlink(missing_ok=True)
            if self._daemon is not None and self._daemon.poll() is None:
                with contextlib.suppress(OSError):
                    self._daemon.terminate()
            self._daemon = None

    def _ensure_key(self, host_key: object, host_key_pub: object) -> None:
        self._keyed = True
        if self._key.exists():
            return
        self._key.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(host_key, str) and isinstance(host_key_pub, str) and host_key.startswith("-----BEGIN"):
            fd = os.open(self._key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(host_key if host_key.endswith("\n") else host_key + "\n")
            self._key.with_name(self._key.name + ".pub").write_text(host_key_pub.strip() + "\n")
            return
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@sheesh", "-f", str(self._key)]
        try:
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SshError(f"cannot make the SSH host key: {exc}") from None

    def _restart_daemon(self) -> None:
        """Run ``sshd -D`` as our child (its PID also in ``PID_FILE``, so an agent started after a crash of
        this one stops it), and wait until it listens."""
        with contextlib.suppress(OSError, ValueError):
            stale = int(Path(PID_FILE).read_text().strip())
            if b"sshd" in Path(f"/proc/{stale}/cmdline").read_bytes():
                _end(stale, None)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        devnull = subprocess.DEVNULL
        try:
            self._daemon = subprocess.Popen(
                [SSHD, "-D"], stdin=devnull, stdout=devnull, stderr=devnull, start_new_session=True
            )
        except OSError as exc:
            raise SshError(f"cannot start the SSH server: {exc}") from None
        Path(PID_FILE).write_text(f"{self._daemon.pid}\n")
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not _listening(SSH_PORT):
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                raise SshError(f"sshd did not start listening (exit status {self._daemon.poll()})")
            time.sleep(0.02)

    def authorize(self, keys: object, host_key: object = None, host_key_pub: object = None) -> dict[str, list[str]]:
        """Make ``keys`` root's authorized keys, with the SSH server running (its host key first: ``host_key``
        and ``host_key_pub`` when given, an OpenSSH private key and its public line); the host public keys."""
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise SshError(f"keys must be a list of at most {MAX_KEYS} public keys")
        for key in keys:
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or any(c in key for c in "\n\r\0"):
                raise SshError("each key must be one line of at most 16 KiB")
        with self._lock:
            self._ensure_key(host_key, host_key_pub)
            if self.run_daemon and (self._daemon is None or self._daemon.poll() is not None):
                self._restart_daemon()
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
