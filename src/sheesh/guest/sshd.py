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
import subprocess
import threading
import time
from pathlib import Path

HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
AUTHORIZED_KEYS = "root/.ssh/authorized_keys"
PID_FILE = "/run/sshd.pid"
SSHD = "/usr/sbin/sshd"
MAX_KEYS = 64
MAX_KEY_CHARS = 16 * 1024
READY_TIMEOUT_S = 25.0


class SshError(Exception):
    """The SSH server could not be prepared, or the keys sent are malformed."""


class SshServer:
    def __init__(self, root: str = "/", *, run_daemon: bool = True) -> None:
        self.root = Path(root)
        self.run_daemon = run_daemon
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._error: str | None = None

    def start(self, *, regenerate: bool) -> None:
        """(Re)start in the background: a new host key first when ``regenerate`` or when there is none."""
        self._ready.clear()
        threading.Thread(target=self._prepare, args=(regenerate,), daemon=True, name="sshd").start()

    def _prepare(self, regenerate: bool) -> None:
        with self._lock:
            try:
                if self.run_daemon:
                    _stop_daemon()
                key = self.root / HOST_KEY
                if regenerate or not key.exists():
                    key.parent.mkdir(parents=True, exist_ok=True)
                    for old in (key, key.with_name(key.name + ".pub")):
                        old.unlink(missing_ok=True)
                    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@sheesh", "-f", str(key)]
                    subprocess.run(argv, check=True, capture_output=True, timeout=60)
                if self.run_daemon:
                    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
                    subprocess.run([SSHD], check=True, capture_output=True, timeout=30)
                self._error = None
            except (OSError, subprocess.SubprocessError) as exc:
                self._error = f"cannot start the SSH server: {exc}"
            finally:
                self._ready.set()

    def authorize(self, keys: object) -> dict[str, list[str]]:
        """Make ``keys`` root's authorized keys; the host public keys."""
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise SshError(f"keys must be a list of at most {MAX_KEYS} public keys")
        for key in keys:
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or any(c in key for c in "\n\r\0"):
                raise SshError("each key must be one line of at most 16 KiB")
        if not self._ready.wait(READY_TIMEOUT_S):
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


def _stop_daemon() -> None:
    """Stop the listening sshd (sessions already open keep running)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(PID_FILE).read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)
