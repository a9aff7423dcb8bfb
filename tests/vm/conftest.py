"""Fixtures for tests that boot real QEMU VMs with the built-in guest image."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sheesh.config import Settings
from sheesh.image.builder import BuiltImage, ImageBuilder
from tests.server import ServerProcess, running_server


@pytest.fixture(scope="session")
def guest_image() -> BuiltImage:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("QEMU is not installed: run scripts/setup.sh")
    return ImageBuilder(Settings().resolved_image_dir()).build()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    """One server for a whole module (tests that only need a running VM, not a fresh manager)."""
    with running_server(tmp_path_factory.mktemp("shared") / "data", guest_image.path.parent.parent) as srv:
        yield srv


@pytest.fixture
def server(tmp_path: Path, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "data", guest_image.path.parent.parent) as srv:
        yield srv


SERVE = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(16)
while True:
    conn, peer = srv.accept()
    conn.sendall(f"{sys.argv[2]} peer={peer[0]}\\n".encode()); conn.close()
"""
CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(3)
if len(sys.argv) > 3: s.bind((sys.argv[3], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(200).decode().strip())
except socket.timeout: print("timeout")
except ConnectionRefusedError: print("refused")
except OSError as e: print("error", e.errno)
"""


@dataclass
class Lan:
    ns: str
    host_if: str
    host_ip: str
    peer_ip: str
    other_ip: str
    procs: list[subprocess.Popen[bytes]]

    def connect(self, ip: str, port: int, src: str | None = None) -> str:
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-c", CONNECT, ip, str(port), *([src] if src else [])]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout.strip()


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    tag = f"{os.getpid() % 10000}"
    net = f"10.251.{os.getpid() % 200}"
    ns, host_if, ns_if = f"shlan{tag}", f"shvh{tag}", f"shvn{tag}"
    _sh("ip", "netns", "add", ns)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{net}.1/24", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        for cmd in (
            ["ip", "addr", "add", f"{net}.2/24", "dev", ns_if],
            ["ip", "addr", "add", f"{net}.3/24", "dev", ns_if],
            ["ip", "link", "set", ns_if, "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", f"{net}.1"],
        ):
            _sh("ip", "netns", "exec", ns, *cmd)
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVE, "8080", "lan-hello"]))
        yield Lan(ns, host_if, f"{net}.1", f"{net}.2", f"{net}.3", procs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
