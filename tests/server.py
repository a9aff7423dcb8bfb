"""A ``sheesh serve`` subprocess owned by a test: started on a free port, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
    """Send ``sig`` to ``proc`` and wait; SIGKILL after ``timeout_s``."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 20) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def nodes_by_name(c: httpx.Client) -> dict[str, dict[str, Any]]:
    """``GET /v1/nodes`` by node name."""
    return {n["name"]: n for n in c.get("/v1/nodes").json()}


def kill_vms(data_dir: Path) -> None:
    """Kill QEMU, fake-VMM and OpenVPN processes ``data_dir`` owns (by PID file, checked against the command
    line)."""
    vms = data_dir / "vms"
    for pidfile in [*vms.glob("*/qemu.pid"), *vms.glob("*/vmm.pid"), *vms.glob("*/vpn/openvpn.pid")]:
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(pidfile.parent).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


class ServerProcess:
    _instances = 0

    def __init__(self, data_dir: Path, image_dir: Path, api_key: str = "vm-test-key", **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.node_port = free_port()
        self.api_key = api_key
        self.env = {
            **os.environ,
            "SHEESH_DATA_DIR": str(data_dir),
            "SHEESH_IMAGE_DIR": str(image_dir),
            "SHEESH_API_KEY": api_key,
            "SHEESH_PORT": str(self.port),
            "SHEESH_NODE_PORT": str(self.node_port),
            **env,
        }
        # every server its own bridge, nftables tables and guest network; no forwarding to real interfaces
        ServerProcess._instances += 1
        self.env.setdefault("SHEESH_BRIDGE", f"sht{os.getpid() % 10000}x{ServerProcess._instances}")
        self.env.setdefault("SHEESH_GUEST_NETWORK", f"10.{20 + (os.getpid() + ServerProcess._instances) % 200}.0.0/16")
        self.env.setdefault("SHEESH_NET_UPLINKS", '["lo"]')
        self.env.setdefault("SHEESH_RAM_DIR", f"/dev/shm/sheesh/test-{os.getpid()}-{ServerProcess._instances}")
        self.env.setdefault("SHEESH_ACCEL", "tcg")
        self.env.setdefault("SHEESH_TEMPLATES", "false")
        self.env.setdefault("SHEESH_TEMPLATE_SHAPES", "")  # a test that wants one asks for it
        self.env.setdefault("SHEESH_WARM_SPARES", "0")  # as templates: a test that wants spares asks for them
        self.env.setdefault("SHEESH_GLOBAL_RATE_LIMIT", "100000")  # suites run faster than 100 requests/min
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    @property
    def tls(self) -> bool:
        return self.env.get("SHEESH_TLS") == "self-signed"

    @property
    def cert(self) -> Path:
        """The self-signed certificate a TLS server made on its first start."""
        return self.data_dir / "tls" / "cert.pem"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.cert)) if self.tls else True

    def client(self, timeout: float = 120) -> httpx.Client:
        headers = {"X-API-Key": self.api_key}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=self.verify)

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from sheesh.cli.main import main; main()", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if not self.tls or self.cert.exists():
                    httpx.get(self.url + "/openapi.json", timeout=1, verify=self.verify)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill_vms(self) -> None:
        kill_vms(self.data_dir)

    def remove_ram_dir(self) -> None:
        """Remove this server's guest RAM files (its VMs are dead by now)."""
        shutil.rmtree(self.env["SHEESH_RAM_DIR"], ignore_errors=True)

    def network_down(self) -> None:
        """Remove this server's bridge, taps and nftables tables (``sheesh network down``)."""
        subprocess.run(
            [sys.executable, "-c", "from sheesh.cli.main import main; main()", "network", "down"],
            env=self.env,
            check=True,
            capture_output=True,
        )


@contextlib.contextmanager
def running_server(data_dir: Path, image_dir: Path, **env: str) -> Iterator[ServerProcess]:
    """A started server that is stopped, and whose VMs are killed, on exit."""
    srv = ServerProcess(data_dir, image_dir, **env).start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.kill_vms()
        srv.network_down()
        srv.remove_ram_dir()


class NodeProcess:
    """A ``sheesh node`` subprocess owned by a test: a node agent alone, reporting to ``control_url``; in the
    network namespace ``netns`` when given (a host of its own, listening on ``SHEESH_HOST``)."""

    def __init__(
        self,
        data_dir: Path,
        image_dir: Path,
        *,
        control_url: str,
        name: str,
        token: str,
        netns: str | None = None,
        **env: str,
    ):
        self.data_dir = data_dir
        self.name = name
        self.netns = netns
        self.port = free_port()
        self.env = {
            **os.environ,
            "SHEESH_DATA_DIR": str(data_dir),
            "SHEESH_IMAGE_DIR": str(image_dir),
            "SHEESH_NODE_PORT": str(self.port),
            "SHEESH_NODE_NAME": name,
            "SHEESH_NODE_TOKEN": token,
            "SHEESH_CONTROL_URL": control_url,
            "SHEESH_HEARTBEAT_INTERVAL_S": "0.5",
            "SHEESH_RAM_DIR": f"/dev/shm/sheesh/test-{os.getpid()}-{name}",
            "SHEESH_ACCEL": "tcg",
            "SHEESH_WARM_SPARES": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "node.log"

    @property
    def url(self) -> str:
        scheme = "https" if self.env.get("SHEESH_TLS") == "self-signed" else "http"
        return f"{scheme}://{self.env.get('SHEESH_HOST', '127.0.0.1')}:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        cert = self.data_dir / "tls" / "cert.pem"
        return ssl.create_default_context(cafile=str(cert)) if self.url.startswith("https") else True

    def start(self) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-c", "from sheesh.cli.main import main; main()", "node"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/metrics", timeout=1, verify=self.verify).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError("node did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        """SIGKILL the node agent (a crash: its VMs go on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill_vms(self) -> None:
        kill_vms(self.data_dir)
        shutil.rmtree(self.env["SHEESH_RAM_DIR"], ignore_errors=True)


@contextlib.contextmanager
def running_nodes(procs: Iterable[NodeProcess]) -> Iterator[None]:
    """Start every node of ``procs``; stop them and kill their VMs on exit."""
    started = list(procs)
    try:
        for proc in started:
            proc.start()
        yield
    finally:
        for proc in started:
            proc.stop()
            proc.kill_vms()
