"""The sheesh guest agent (standard library only; runs as a service inside each VM).

Serves the frame protocol of ``protocol.py`` on the virtio-serial port named ``sheesh.agent``; for tests
and the fake VMM driver it can instead serve a Unix socket (``--listen``) with paths mapped to a host folder.
Each ``protocol.Op`` has one handler in ``Agent.handlers``: processes (``execution.py``), run-ts/run-js
(``scripts.py``), files (``files.py``), identity and network (here, ``netif.py``). In a VM the agent puts
itself and user jobs into cgroups (``cgroups.py``) so no job can starve it. An ACPI power-button press
powers the guest off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import fcntl
import glob
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sheesh.guest import files, handoff, netif, protocol
from sheesh.guest.cgroups import ExecCgroups
from sheesh.guest.execution import GUEST_WORKSPACE, RequestError, RunConfig, WarmShells, run_exec
from sheesh.guest.protocol import ErrorKind, Op
from sheesh.guest.scripts import rehearse, run_script
from sheesh.guest.sshd import SshError, SshServer
from sheesh.guest.streams import StreamJobs
from sheesh.guest.timers import quiet_pit
from sheesh.guest.warmdeno import WarmDeno

AGENT_ID = uuid.uuid4().hex
"""Names this agent process in every reply: the node notices a restarted agent by a new name."""
STAGING = "/var/lib/sheesh-agent/staging"
_KEY_POWER = 116
_EV_KEY = 1
_INPUT_EVENT = struct.Struct("llHHi")
_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="req")


@dataclass
class AgentConfig(RunConfig):
    """``RunConfig`` plus the agent's own settings."""

    deno: str = "/usr/local/bin/deno"
    node: str = "/usr/bin/node"
    staging: str | None = None
    """Root-only folder for uploads being extracted (same filesystem as the workspace, outside it)."""
    poweroff: Callable[[], None] = field(default=lambda: None)
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    in_vm: bool = True
    """False when the agent serves a Unix socket on a host (tests, the fake VMM): it must not change the
    machine it runs on (network, clock, RNG, cgroups)."""
    ssh: SshServer | None = None
    """The VM's SSH server; None: the agent offers no SSH."""


_RNDADDENTROPY = 0x40085203
_RNDRESEEDCRNG = 0x5207


def refresh_identity(config: AgentConfig, req: dict[str, Any]) -> dict[str, Any]:
    """After a restore or clone: mix host-provided entropy into the kernel RNG and reseed it, set the clock,
    take a new boot id and, when ``net`` is given, apply the new NIC settings (as the ``net`` op; its reply
    is under ``net``). Steps needing root are skipped (and reported) when the agent is not root."""
    done: list[str] = []
    seed = base64.b64decode(str(req.get("seed", "")))
    system = config.in_vm and os.geteuid() == 0
    if seed and system:
        with open("/dev/urandom", "wb") as rnd:
            fcntl.ioctl(rnd, _RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
            with contextlib.suppress(OSError):
                fcntl.ioctl(rnd, _RNDRESEEDCRNG)
        done.append("rng")
    now_ns = req.get("time_ns")
    if isinstance(now_ns, int) and system:
        time.clock_settime_ns(time.CLOCK_REALTIME, now_ns)
        done.append("clock")
    config.boot_id = os.urandom(16).hex()  # as uuid4().hex, with less code to run cold after a restore
    if config.ssh is not None:
        config.ssh.forget()
        done.append("ssh")
    reply: dict[str, Any] = {"boot_id": config.boot_id, "done": done}
    if isinstance(net := req.get("net"), dict):
        reply["net"] = configure_network(config, net)
    return reply


def set_clock(config: AgentConfig, req: dict[str, Any]) -> dict[str, Any]:
    """The host's time, after the VM was paused (its clock stood still meanwhile)."""
    now_ns = req.get("time_ns")
    if not isinstance(now_ns, int):
        raise RequestError("time_ns must be an integer")
    if not config.in_vm or os.geteuid() != 0:
        return {"done": False}
    time.clock_settime_ns(time.CLOCK_REALTIME, now_ns)
    return {"done": True}


def configure_network(config: AgentConfig, req: dict[str, Any]) -> dict[str, Any]:
    """Set up the VM's network interface (the first one besides ``lo``) as the host assigned it: after a
    boot and after every restore (clones must not keep the template's MAC and address)."""
    devices = sorted(d for d in os.listdir("/sys/class/net") if d != "lo") if os.path.isdir("/sys/class/net") else []
    if not devices:
        raise RequestError("the VM has no network interface")
    try:
        nic = netif.NicSettings.parse(req.get("ip"), req.get("prefix"), req.get("gateway"), req.get("mac"))
        if not config.in_vm or os.geteuid() != 0:
            return {"device": devices[0], "done": False}
        steps = netif.configure(devices[0], nic)
    except netif.NetifError as exc:
        raise RequestError(str(exc)) from None
    if (resolv := resolv_conf(req.get("dns"))) and _read_text("/etc/resolv.conf") != resolv:
        with open("/etc/resolv.conf", "w") as fh:
            fh.write(resolv)
        steps.append("dns")
    return {"device": devices[0], "done": True, "steps": steps}


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def resolv_conf(servers: object) -> str:
    """``/etc/resolv.conf`` naming the IPv4 ``servers`` ("" when there are none)."""
    if not isinstance(servers, list):
        return ""
    try:
        valid = [str(ipaddress.IPv4Address(str(s))) for s in servers[:3]]
    except ValueError as exc:
        raise RequestError(f"bad DNS server: {exc}") from None
    return "".join(f"nameserver {ip}\n" for ip in valid)


class Agent:
    """Dispatches requests through ``handlers``: an exec, a ping or a refresh on the thread that read it
    (``Reader``), any other on a worker thread of its own; responses serialised by a lock."""

    def __init__(
        self,
        config: AgentConfig,
        write: Callable[[bytes], None],
        shells: WarmShells | None = None,
        transfers: files.Transfers | None = None,
        deno: WarmDeno | None = None,
    ) -> None:
        self.config = config
        self.deno = deno
        self.transfers = transfers or files.Transfers(
            config.workspace, GUEST_WORKSPACE, config.owner(), staging=config.staging
        )
        self._write = write
        self._lock = threading.Lock()
        self.shells = shells
        self.streams = StreamJobs(config, shells.cgroups if shells is not None else None, self.send)
        t = self.transfers
        self.handlers: dict[Op, Callable[[dict[str, Any]], dict[str, Any]]] = {
            Op.PING: self._ping,
            Op.REFRESH: self._refresh,
            Op.CLOCK: lambda req: set_clock(config, req),
            Op.NET: lambda req: configure_network(config, req),
            Op.RESIZE_FS: _resize_fs,
            Op.EXEC: lambda req: run_exec(config, req, self.shells),
            Op.RUN_TS: lambda req: run_script(config, req, "ts", config.deno, shells=self.shells, deno=self.deno),
            Op.RUN_JS: lambda req: run_script(config, req, "js", config.node, shells=self.shells),
            Op.SYNC: _sync,
            Op.SSH_AUTHORIZE: self._ssh_authorize,
            Op.UPLOAD_BEGIN: lambda req: {
                "upload": t.begin_upload(str(req.get("dest")), int(req.get("max_bytes") or 1 << 30))
            },
            Op.UPLOAD_CHUNK: self._upload_chunk,
            Op.UPLOAD_END: lambda req: t.end_upload(str(req.get("upload"))),
            Op.UPLOAD_ABORT: self._upload_abort,
            Op.DOWNLOAD_BEGIN: lambda req: {"download": t.begin_download(str(req.get("path")))},
            Op.DOWNLOAD_NEXT: self._download_next,
            Op.DOWNLOAD_CLOSE: self._download_close,
            Op.EXEC_START: self.streams.start,
            Op.EXEC_INPUT: self._exec_input,
            Op.EXEC_SIGNAL: lambda req: self._stream_op(req, lambda job: job.signal(str(req["signal"]))),
            Op.EXEC_RESIZE: lambda req: self._stream_op(req, lambda job: job.resize(req["rows"], req["cols"])),
            Op.EXEC_ACK: lambda req: self._stream_op(req, lambda job: job.ack(int(req["bytes"]))),
            Op.REHEARSE: lambda _: rehearse(config, self.deno),
            Op.WAKE: lambda _: {},
        }

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        with self._lock:
            self._write(frame)

    def handle(self, req: dict[str, Any]) -> None:
        """Answer ``req`` on a worker thread (ops not answered at all: here, they are quick)."""
        if req.get("op") in protocol.NO_REPLY:
            with contextlib.suppress(Exception):
                self.dispatch(req)
            return
        _POOL.submit(self._handle, req)

    def runs_here(self, req: dict[str, Any]) -> bool:
        """Whether the thread that read ``req`` answers it (``handle_here``): an exec (see ``Reader``), a ping,
        a refresh (the first request after a restore, alone)."""
        return req.get("op") in _RUN_HERE

    def handle_here(self, req: dict[str, Any]) -> None:
        """Answer ``req`` on this thread."""
        self._handle(req)

    def host_gone(self) -> None:
        """The host disconnected: its streaming jobs have nobody to send output to (they are killed)."""
        self.streams.host_gone()

    def _stream_op(self, req: dict[str, Any], act: Callable[[Any], None]) -> dict[str, Any]:
        act(self.streams.get(req.get("stream")))
        return {}

    def _exec_input(self, req: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(str(req.get("data") or ""))
        self.streams.get(req.get("stream")).write(data, bool(req.get("eof")))
        return {}

    def _refresh(self, req: dict[str, Any]) -> dict[str, Any]:
        reply = refresh_identity(self.config, req)
        if self.deno is not None and req.get("copy", True) is not False:
            self.deno.restored()  # its Deno shares V8's random state with the original's
        return reply

    def _ping(self, _: dict[str, Any]) -> dict[str, Any]:
        warm = self.shells.ready() if self.shells is not None else 0
        reply = {"version": protocol.PROTOCOL_VERSION, "boot_id": self.config.boot_id, "warm": warm}
        if self.deno is not None:
            reply["deno"] = self.deno.state()
        return reply

    def _ssh_authorize(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.config.ssh is None:
            raise RequestError("this agent offers no SSH server", ErrorKind.NOT_FOUND)
        try:
            return self.config.ssh.authorize(req.get("keys"), req.get("host_key"), req.get("host_key_pub"))
        except SshError as exc:
            raise RequestError(str(exc)) from None

    def _upload_chunk(self, req: dict[str, Any]) -> dict[str, Any]:
        self.transfers.feed(str(req.get("upload")), base64.b64decode(str(req.get("data", ""))))
        return {}

    def _upload_abort(self, req: dict[str, Any]) -> dict[str, Any]:
        self.transfers.abort_upload(str(req.get("upload")))
        return {}

    def _download_close(self, req: dict[str, Any]) -> dict[str, Any]:
        self.transfers.close_download(str(req.get("download")))
        return {}

    def _download_next(self, req: dict[str, Any]) -> dict[str, Any]:
        data, eof = self.transfers.next_chunk(str(req.get("download")))
        return {"data": base64.b64encode(data).decode(), "eof": eof}

    def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            op = Op(str(req.get("op")))
            handler = self.handlers[op]
        except (ValueError, KeyError):
            raise RequestError(f"unknown op {req.get('op')!r}") from None
        if missing := protocol.missing_fields(op, req):
            raise RequestError(f"{op} needs {', '.join(missing)}")
        try:
            return handler(req)
        except files.TransferError as exc:
            raise RequestError(str(exc), exc.kind) from exc

    def _handle(self, req: dict[str, Any]) -> None:
        with self.shells.refills_after() if self.shells is not None else contextlib.nullcontext():
            self._answer(req)

    def _answer(self, req: dict[str, Any]) -> None:
        rid = req.get("id")
        t0 = time.monotonic()
        try:
            reply = {"id": rid, "ok": True, **self.dispatch(req)}
        except RequestError as exc:
            reply = {"id": rid, "ok": False, "error": str(exc), "kind": exc.kind}
        except Exception as exc:  # report, never die
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": ErrorKind.INTERNAL}
        reply["agent"] = AGENT_ID
        reply["took_ms"] = round((time.monotonic() - t0) * 1000, 3)
        with contextlib.suppress(OSError):
            self.send(reply)


def _sync(_: dict[str, Any]) -> dict[str, Any]:
    os.sync()
    return {}


def _resize_fs(_: dict[str, Any]) -> dict[str, Any]:
    subprocess.Popen(["resize2fs", "/dev/vda"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {}


def _write_all(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    return write


def find_port(name: str = protocol.PORT_NAME) -> str | None:
    """The /dev path of the virtio-serial port called ``name``, if present."""
    for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
        with open(name_file) as fh:
            if fh.read().strip() == name:
                return "/dev/" + os.path.basename(os.path.dirname(name_file))
    return None


_RUN_HERE = frozenset({Op.EXEC, Op.PING, Op.REFRESH})


class Reader:
    """Reads the host's requests from ``fd`` and hands them to ``agent``; one thread reads at a time.

    An exec is answered by the thread that read it, with no hand-off to a worker thread: under emulation, after
    the guest was idle, waking a worker cost an exec ~1 ms. While the exec waits for its job, the job watches
    ``fd`` (``handoff.current``): when the host sends more, another thread takes over reading (``run`` on the
    pool) and the exec's thread stops reading once it answered. Other requests go to worker threads as before.
    """

    def __init__(self, agent: Agent, fd: int, read: Callable[[], bytes], *, reconnects: bool) -> None:
        self.agent = agent
        self.fd = fd
        self._read = read
        self._reconnects = reconnects
        """EOF means no host is connected for now (the virtio-serial port): wait and read again; else the end."""
        self._decoder = protocol.FrameDecoder()
        self._heard = False
        self.ended = threading.Event()
        self.error: BaseException | None = None

    def serve(self) -> None:
        """Read until the input ends; raise what stopped the reading thread, whichever it was."""
        self.run()
        self.ended.wait()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        """Read and dispatch until the input ends, or return once this thread handed reading over."""
        try:
            while True:
                data = self._read()
                if not data:
                    self._decoder.reset()
                    if self._heard:  # the host that spoke went away
                        self._heard = False
                        self.agent.host_gone()
                    if not self._reconnects:
                        break
                    time.sleep(0.02)
                    continue
                self._heard = True
                requests = self._decoder.feed(data)
                here = requests.pop() if requests and self.agent.runs_here(requests[-1]) else None
                for req in requests:
                    self.agent.handle(req)
                if here is not None:
                    passed = handoff.Handoff(self.fd, lambda: _POOL.submit(self.run))
                    with passed.watching():
                        self.agent.handle_here(here)
                    if passed.fired:
                        return
        except BaseException as exc:  # the reader is gone: so is the agent (the guest's init restarts it)
            self.error = exc
        self.ended.set()


def _read_port(fd: int) -> Callable[[], bytes]:
    def read() -> bytes:
        while True:
            try:
                return os.read(fd, 65536)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EINTR):
                    raise

    return read


def serve_port(config: AgentConfig, path: str, shells: WarmShells | None = None, deno: WarmDeno | None = None) -> None:
    """Serve the virtio-serial port forever; EOF means no host is connected: poll and go on."""
    fd = os.open(path, os.O_RDWR)
    agent = Agent(config, _write_all(fd), shells, deno=deno)
    Reader(agent, fd, _read_port(fd), reconnects=True).serve()


def serve_connection(
    config: AgentConfig,
    conn: socket.socket,
    shells: WarmShells | None = None,
    transfers: files.Transfers | None = None,
    deno: WarmDeno | None = None,
) -> None:
    """Serve one stream connection until the peer closes it."""
    agent = Agent(config, conn.sendall, shells, transfers, deno)

    def read() -> bytes:
        try:
            return conn.recv(65536)
        except OSError:
            return b""

    with conn:
        Reader(agent, conn.fileno(), read, reconnects=False).serve()


def serve_unix(config: AgentConfig, path: str, shells: WarmShells | None = None, deno: WarmDeno | None = None) -> None:
    """Listen on a Unix socket, one connection at a time (like a QEMU chardev)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    transfers = files.Transfers(config.workspace, GUEST_WORKSPACE, config.owner())
    while True:
        conn, _ = srv.accept()
        serve_connection(config, conn, shells, transfers, deno)


def watch_power_button(poweroff: Callable[[], None]) -> None:
    """Power off when an ACPI power-button key press arrives on any input device."""

    def watch(path: str) -> None:
        try:
            with open(path, "rb", buffering=0) as dev:
                while True:
                    data = dev.read(_INPUT_EVENT.size)
                    if len(data) < _INPUT_EVENT.size:
                        return
                    _, _, etype, code, value = _INPUT_EVENT.unpack(data)
                    if etype == _EV_KEY and code == _KEY_POWER and value == 1:
                        poweroff()
        except OSError:
            return

    for path in glob.glob("/dev/input/event*"):
        threading.Thread(target=watch, args=(path,), daemon=True).start()


def _guest_poweroff() -> None:
    os.sync()
    subprocess.run(["/bin/busybox", "poweroff"], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sheesh guest agent")
    parser.add_argument("--listen", help="serve a Unix socket instead of the virtio-serial port")
    parser.add_argument("--workspace", default=GUEST_WORKSPACE, help="folder that stands for /workspace")
    parser.add_argument("--same-user", action="store_true", help="run commands as the agent's own user")
    parser.add_argument("--deno", default=shutil.which("deno") or "/usr/local/bin/deno", help="Deno binary")
    parser.add_argument("--node", default=shutil.which("node") or "/usr/bin/node", help="Node.js binary")
    args = parser.parse_args(argv)

    if args.listen:
        ssh = SshServer(os.path.join(os.path.dirname(os.path.abspath(args.workspace)), "ssh-root"), run_daemon=False)
        config = AgentConfig(
            deno=args.deno,
            node=args.node,
            workspace=args.workspace,
            uid=None,
            gid=None,
            home=args.workspace,
            user=os.environ.get("USER", "user"),
            poweroff=lambda: os._exit(0),
            in_vm=False,
            ssh=ssh,
        )
        if not args.same_user:
            config.uid, config.gid = 1000, 1000
        serve_unix(config, args.listen, WarmShells(config), WarmDeno(config))
        return 0

    ssh = SshServer()
    config = AgentConfig(workspace=args.workspace, poweroff=_guest_poweroff, staging=STAGING, ssh=ssh)
    cgroups = ExecCgroups.setup()
    pit = "stopped" if quiet_pit() else "left"  # an idle guest's QEMU woke ~36 times a second for it
    watch_power_button(_guest_poweroff)
    while True:
        path = find_port()
        if path is not None:
            break
        time.sleep(0.05)
    state = f"cgroups: {'on' if cgroups else 'off'}, PIT: {pit}"
    print(f"sheesh-agent: serving {path} ({state})", file=sys.stderr, flush=True)
    serve_port(config, path, WarmShells(config, cgroups=cgroups), WarmDeno(config, cgroups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
