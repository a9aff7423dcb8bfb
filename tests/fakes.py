"""Helpers building a control plane on fakes (memory store + fake node client), and a node whose one VM
has a fake serial console."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from sheesh.config import Settings
from sheesh.control.node_client import FakeNodeClient
from sheesh.control.services import Services
from sheesh.models import Image
from sheesh.node.agent import NodeAgent
from sheesh.store.memory import MemoryStore
from sheesh.store.repo import Store
from sheesh.vmm.driver import SERIAL_SOCKET
from sheesh.vmm.fake import FakeDriver


def add_default_image(store: Store, path: Path, rootfs_mb: int = 512) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinux", "initrd.cpio", "rootfs.ext4"):
        (path / name).write_bytes(b"fake " + name.encode())
    image = Image("img-test", "debian-bookworm", "test image", rootfs_mb, False, datetime.now(UTC))
    store.add_image(image, path)
    store.set_default_image(image.id)
    return image.id


ADMIN = {"X-API-Key": "test-key"}
"""Headers of the admin API key the ``settings`` fixture configures."""
PASSWORD = "correct horse battery"


def user_headers(c: TestClient, name: str) -> dict[str, str]:
    """Make user ``name`` (through the API) and the headers of a first API key of theirs."""
    assert c.post("/v1/users", json={"username": name, "password": PASSWORD}, headers=ADMIN).status_code == 201
    svc: Services = c.app.state.services  # type: ignore[attr-defined]
    user = svc.store.get_user_by_name(name)
    assert user is not None
    return {"X-API-Key": svc.auth.create_key(user.id, "first")[1]}


@dataclass(frozen=True, kw_only=True)
class FakeStack:
    client: TestClient
    svc: Services
    node: FakeNodeClient


def fake_services(settings: Settings) -> tuple[Services, FakeNodeClient]:
    store = MemoryStore()
    add_default_image(store, settings.data_dir / "img")
    node = FakeNodeClient()
    return Services.create(settings, store, node), node


class RunningDriver(FakeDriver):
    """A fake VMM on which ``vm-1`` is running (without a process)."""

    def is_running(self, vm_id: str) -> bool:
        return vm_id == "vm-1"


@contextlib.contextmanager
def node_with_console(root: Path) -> Iterator[tuple[NodeAgent, bytearray]]:
    """A node whose vm-1 has a "serial console" (a Unix socket) that greets with ``login banner`` and echoes
    what it receives upper-cased; yields the node and the bytes the console received."""
    node = NodeAgent(root / "vms", RunningDriver())
    (root / "vms" / "vm-1").mkdir(parents=True)
    received = bytearray()
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(root / "vms" / "vm-1" / SERIAL_SOCKET))
    srv.listen(1)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client may leave at any time
                conn.sendall(b"login banner\r\n")
                while data := conn.recv(4096):
                    received.extend(data)
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield node, received
    finally:
        srv.close()


@contextlib.contextmanager
def serving(app: ASGIApp) -> Iterator[int]:
    """``app`` served by a real uvicorn on a loopback port (in a thread of this process); yields the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.02)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
