"""The sheesh guest agent (standard library only; runs as a service inside each VM).

Serves the frame protocol of ``protocol.py`` on the virtio-serial port named ``sheesh.agent``; for tests
and the fake VMM driver it can instead serve a Unix socket (``--listen``) with paths mapped to a host folder.

Operations: ``ping``, ``exec`` (``bash -lc`` as uid/gid 1000 in /workspace with env and timeout; process
group killed on timeout), ``sync``, ``shutdown`` (sync then power off). An ACPI power-button press also
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
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

try:  # inside the guest the sibling modules sit beside this file
    from sheesh.guest import files, netif, protocol
except ImportError:  # pragma: no cover - guest layout: /opt/sheesh/*.py, run with -I
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import files  # type: ignore[no-redef,import-not-found]
    import netif  # type: ignore[no-redef,import-not-found]
    import protocol  # type: ignore[no-redef,import-not-found]

GUEST_WORKSPACE = "/workspace"
EXIT_TIMEOUT = 124
_KEY_POWER = 116
_EV_KEY = 1
_INPUT_EVENT = struct.Struct("llHHi")
_TRANSFER_OPS = frozenset(
    {"upload_begin", "upload_chunk", "upload_end", "upload_abort", "download_begin", "download_next", "download_close"}
)
_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="req")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RequestError(Exception):
    """A request the agent refuses; ``kind`` is sent back to the node."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class AgentConfig:
    """Where the agent maps ``/workspace`` and which user runs commands (``None``: the agent's own)."""

    workspace: str = GUEST_WORKSPACE
    uid: int | None = 1000
    gid: int | None = 1000
    home: str = "/home/user"
    user: str = "user"
    deno: str = "/usr/local/bin/deno"
    poweroff: Callable[[], None] = field(default=lambda: None)
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    in_vm: bool = True
    """False when the agent serves a Unix socket on a host (tests, the fake VMM): it must not change the
    machine it runs on (network, clock, RNG)."""

    def owner(self) -> tuple[int, int] | None:
        """uid/gid that files written for the user get (None: leave as the agent's own)."""
        if self.uid is None or os.getuid() == self.uid:
            return None
        return (self.uid, self.gid if self.gid is not None else self.uid)

    def map_path(self, path: str) -> str:
        """Translate a guest path under /workspace to this agent's workspace folder."""
        norm = os.path.normpath(path)
        if norm == GUEST_WORKSPACE or norm.startswith(GUEST_WORKSPACE + "/"):
            return self.workspace + norm[len(GUEST_WORKSPACE) :]
        return norm


def _base_env(config: AgentConfig) -> dict[str, str]:
    return {
        "HOME": config.home,
        "USER": config.user,
        "LOGNAME": config.user,
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
    }


def _collect(
    proc: subprocess.Popen[bytes], out_fd: int, err_fd: int, deadline: float | None, limit: int
) -> tuple[bool, bool, bytes, bytes]:
    """Read both pipes until EOF (or shortly after bash exits); SIGKILL the group at ``deadline``.
    Closes both fds. Returns (timed_out, truncated, stdout, stderr)."""
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = False
    timed_out = False
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline and exited_at is None:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                deadline = None
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            # background children may keep the pipes open: stop shortly after bash itself is gone
            if exited_at is not None and now - exited_at > 0.05:
                break
            wait = 0.05 if exited_at is None else 0.01
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            for key, _ in sel.select(wait):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                room = limit - len(buf)
                if room > 0:
                    buf.extend(chunk[:room])
                if len(chunk) > room:
                    truncated = True
    finally:
        sel.close()
        os.close(out_fd)
        os.close(err_fd)
    return timed_out, truncated, bytes(bufs[out_fd]), bytes(bufs[err_fd])


def _user_kwargs(config: AgentConfig) -> dict[str, Any]:
    if config.uid is not None and os.getuid() != config.uid:
        return {"user": config.uid, "group": config.gid, "extra_groups": []}
    return {}


@dataclass
class _WarmShell:
    proc: subprocess.Popen[bytes]
    job_fd: int  # our write end
    child_job_fd: int  # the number the shell reads it under
    out_fd: int
    err_fd: int


class WarmShells:
    """Login shells started ahead of time (as the exec user, profile already sourced), each waiting on a
    pipe for exactly one job: the fork and ``bash -l`` start-up are off the exec path. The job script
    does ``cd``, ``export`` and then ``eval`` of the command, so it behaves like ``bash -lc cmd``
    (with the request's env applied after the profile). Falls back to a cold spawn when empty."""

    def __init__(self, config: AgentConfig, size: int = 2) -> None:
        self.config = config
        self.size = size
        self._ready: list[_WarmShell] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._refill, daemon=True).start()
        self._wake.set()

    def _spawn(self) -> _WarmShell:
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if _user_kwargs(self.config):  # the shell reopens the job pipe by path: it must own it
            os.fchown(job_r, self.config.uid or 0, self.config.gid or 0)
        # `source` reads the whole job in one go (``read -d`` would read a pipe byte by byte)
        boot = f"exec 1>&{out_w} 2>&{err_w} {out_w}>&- {err_w}>&-; . /proc/self/fd/{job_r}"
        try:
            proc = subprocess.Popen(
                ["bash", "-l", "-c", boot],
                cwd=self.config.workspace,
                env=_base_env(self.config),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(job_r, out_w, err_w),
                start_new_session=True,
                **_user_kwargs(self.config),
            )
        except BaseException:
            for fd in (job_r, job_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        for fd in (job_r, out_w, err_w):
            os.close(fd)
        return _WarmShell(proc, job_w, job_r, out_r, err_r)

    def _refill(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    self._ready = [w for w in self._ready if w.proc.poll() is None]
                    if len(self._ready) >= self.size:
                        break
                try:
                    shell = self._spawn()
                except OSError:
                    time.sleep(1)
                    continue
                with self._lock:
                    self._ready.append(shell)

    def take(self) -> _WarmShell | None:
        """A ready shell, or None. Call ``refill`` once the job is done (refilling during the job would
        compete with it for the CPU)."""
        with self._lock:
            while self._ready:
                candidate = self._ready.pop(0)
                if candidate.proc.poll() is None:
                    return candidate
        return None

    def refill(self) -> None:
        self._wake.set()

    def ready(self) -> int:
        with self._lock:
            return sum(1 for w in self._ready if w.proc.poll() is None)

    @staticmethod
    def job(job_fd: int, cwd: str, env: dict[str, str], cmd: str) -> bytes:
        """The script a warm shell sources: close the job pipe, cd, export, then ``eval`` the command
        (so a syntax error in it behaves like ``bash -c``: exit status 2, nothing half-parsed)."""
        seed = int.from_bytes(os.urandom(2), "big")  # shells forked before a snapshot share RANDOM state
        lines = [f"exec {job_fd}<&-", f"RANDOM={seed}", f"cd -- {shlex.quote(cwd)} || exit 1"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        lines.append(f"eval -- {shlex.quote(cmd)}")
        return "\n".join(lines).encode() + b"\n"


def _deadline(req: dict[str, Any]) -> float | None:
    timeout_ms = req.get("timeout_ms")
    return time.monotonic() + timeout_ms / 1000 if timeout_ms else None


def _finish(proc: subprocess.Popen[bytes], out_fd: int, err_fd: int, req: dict[str, Any]) -> dict[str, Any]:
    """Collect output and exit status; ``stderr_bytes`` is left for the caller to decode."""
    limit = int(req.get("output_limit") or 4 * 1024 * 1024)
    timed_out, truncated, out, err = _collect(proc, out_fd, err_fd, _deadline(req), limit)
    code = proc.wait()
    if timed_out:
        code = EXIT_TIMEOUT
    elif code < 0:
        code = 128 - code
    return {
        "exit_code": code,
        "stdout": out.decode(errors="replace"),
        "stderr_bytes": err,
        "timed_out": timed_out,
        "truncated": truncated,
    }


def _spawn_collect(
    config: AgentConfig, argv: list[str], cwd: str, env: dict[str, str], req: dict[str, Any]
) -> dict[str, Any]:
    """Start ``argv`` in its own process group as the exec user and collect it (see ``_finish``)."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **_user_kwargs(config),
    )
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
    proc.stdout.close()
    proc.stderr.close()
    return _finish(proc, out_fd, err_fd, req)


def run_exec(config: AgentConfig, req: dict[str, Any], shells: WarmShells | None = None) -> dict[str, Any]:
    """Run ``cmd`` like ``bash -lc``; collect at most ``output_limit`` bytes per stream; kill the process
    group on timeout."""
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or "\0" in cmd:
        raise RequestError("cmd must be a string without NUL bytes")
    cwd = config.map_path(str(req.get("cwd") or GUEST_WORKSPACE))
    if not os.path.isdir(cwd):
        raise RequestError(f"working directory {req.get('cwd') or GUEST_WORKSPACE} does not exist")
    user_env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
    if any(not _ENV_NAME.match(k) or "\0" in v for k, v in user_env.items()):
        raise RequestError("invalid environment variable")
    shell = shells.take() if shells is not None else None
    if shell is None:
        reply = _spawn_collect(config, ["bash", "-lc", cmd], cwd, {**_base_env(config), **user_env}, req)
    else:
        with open(shell.job_fd, "wb") as job:
            job.write(WarmShells.job(shell.child_job_fd, cwd, user_env, cmd))
        reply = _finish(shell.proc, shell.out_fd, shell.err_fd, req)
    if shells is not None:
        shells.refill()
    reply["stderr"] = reply.pop("stderr_bytes").decode(errors="replace")
    return reply


_RESULT_PRELUDE = """\
const __sheeshMark = "\\x1e%(nonce)s ";
const __sheeshEmit = (kind: string, value: unknown) => {
  let text: string;
  try { text = JSON.stringify({ kind, value: value === undefined ? null : value }); }
  catch (e) { text = JSON.stringify({ kind: "error", value: { name: "TypeError", message: String(e) } }); }
  Deno.stderr.writeSync(new TextEncoder().encode("\\n" + __sheeshMark + text + "\\n"));
};
Object.defineProperty(globalThis, "result", { value: Object.freeze({
  set(value: unknown) { __sheeshEmit("result", value); },
  error(err: unknown) {
    const e = err as { name?: string; message?: string };
    __sheeshEmit("error", err instanceof Error || (e && typeof e === "object" && "message" in e)
      ? { name: e.name ?? "Error", message: String(e.message) } : { name: "Error", message: String(err) });
    Deno.exit(1);
  },
}) });
await import(%(module)s);
"""


def _split_result(stderr: bytes, nonce: str) -> tuple[bytes, dict[str, Any] | None]:
    """Remove the result marker lines from stderr; return (stderr, last marker payload)."""
    mark = b"\x1e" + nonce.encode() + b" "
    kept: list[bytes] = []
    found: dict[str, Any] | None = None
    for line in stderr.split(b"\n"):
        if line.startswith(mark):
            with contextlib.suppress(ValueError):
                found = json.loads(line[len(mark) :])
            if kept and kept[-1] == b"":
                kept.pop()  # the newline the marker was prefixed with
            continue
        kept.append(line)
    return b"\n".join(kept), found


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
    config.boot_id = uuid.uuid4().hex
    reply: dict[str, Any] = {"boot_id": config.boot_id, "done": done}
    if isinstance(net := req.get("net"), dict):
        reply["net"] = configure_network(config, net)
    return reply


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


def _env_list(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.match(key) or "\0" in value:
            raise RequestError(f"env entries must be KEY=value: {pair!r}")
        env[key] = value
    return env


def _ts_module(config: AgentConfig, req: dict[str, Any], run_dir: str) -> tuple[str, list[str]]:
    """The module specifier the entry imports, plus the read permission a ``path`` module needs."""
    code, path = req.get("code"), req.get("path")
    if (code is None) == (path is None):
        raise RequestError("exactly one of code or path is required")
    if path is None:
        with open(os.path.join(run_dir, "main.ts"), "w") as fh:
            fh.write(str(code))
        return "./main.ts", []
    norm = os.path.normpath(str(path))
    if not norm.endswith(".ts") or not norm.startswith(GUEST_WORKSPACE + "/"):
        raise RequestError("path must be a .ts file under /workspace")
    module_path = config.map_path(norm)
    if not os.path.isfile(module_path):
        raise RequestError(f"{path} does not exist")
    return "file://" + module_path, ["--allow-read=" + module_path]


def run_ts(config: AgentConfig, req: dict[str, Any]) -> dict[str, Any]:
    """Run TypeScript with Deno, permissions denied by default: ``--allow-env`` only for the given keys,
    network only as ``allow_net`` says. A global ``result`` (set/error) returns structured JSON."""
    flags = [str(f) for f in req.get("deno_flags") or []]
    if any(not f.startswith("-") for f in flags):
        raise RequestError("denoFlags must be flags (starting with -)")
    user_env = _env_list([str(e) for e in req.get("env") or []])
    run_dir = tempfile.mkdtemp(prefix="sheesh-ts-")
    nonce = uuid.uuid4().hex
    try:
        module, perms = _ts_module(config, req, run_dir)
        with open(os.path.join(run_dir, "entry.ts"), "w") as fh:
            fh.write(_RESULT_PRELUDE % {"nonce": nonce, "module": json.dumps(module)})
        perms.append("--no-prompt")
        if user_env:
            perms.append("--allow-env=" + ",".join(user_env))
        allow_net = req.get("allow_net")
        if allow_net is True:
            perms.append("--allow-net")
        elif isinstance(allow_net, list) and allow_net:
            perms.append("--allow-net=" + ",".join(str(h) for h in allow_net))
        if (owner := config.owner()) is not None:
            for name in [run_dir, *(os.path.join(run_dir, n) for n in os.listdir(run_dir))]:
                os.chown(name, *owner)
        argv = [config.deno, "run", *perms, *flags, os.path.join(run_dir, "entry.ts")]
        argv += [str(a) for a in req.get("args") or []]
        env = {**_base_env(config), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", **user_env}
        try:
            reply = _spawn_collect(config, argv, config.workspace, env, req)
        except FileNotFoundError as exc:
            raise RequestError("deno is not installed in this image", "internal") from exc
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    stderr, marker = _split_result(reply.pop("stderr_bytes"), nonce)
    reply["stderr"] = stderr.decode(errors="replace")
    if marker is not None:
        reply["error" if marker.get("kind") == "error" else "result"] = marker.get("value")
    return reply


class Agent:
    """Dispatches requests; one thread per request; responses serialised by a write lock."""

    def __init__(
        self,
        config: AgentConfig,
        write: Callable[[bytes], None],
        shells: WarmShells | None = None,
        transfers: files.Transfers | None = None,
    ) -> None:
        self.config = config
        self.transfers = transfers or files.Transfers(config.workspace, GUEST_WORKSPACE, config.owner())
        self._write = write
        self._lock = threading.Lock()
        self.shells = shells

    def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        with self._lock:
            self._write(frame)

    def handle(self, req: dict[str, Any]) -> None:
        _POOL.submit(self._handle, req)

    def _dispatch(self, req: dict[str, Any]) -> tuple[dict[str, Any], Callable[[], None] | None]:
        op = req.get("op")
        if op == "ping":
            warm = self.shells.ready() if self.shells is not None else 0
            return {"version": protocol.PROTOCOL_VERSION, "boot_id": self.config.boot_id, "warm": warm}, None
        if op == "refresh":
            return refresh_identity(self.config, req), None
        if op == "net":
            return configure_network(self.config, req), None
        if op == "resize_fs":
            subprocess.Popen(["resize2fs", "/dev/vda"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return {}, None
        if op == "exec":
            return run_exec(self.config, req, self.shells), None
        if op == "run_ts":
            return run_ts(self.config, req), None
        if op in _TRANSFER_OPS:
            return self._transfer(op, req), None
        if op == "sync":
            os.sync()
            return {}, None
        if op == "shutdown":
            os.sync()
            return {}, self.config.poweroff
        raise RequestError(f"unknown op {op!r}")

    def _transfer(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        t = self.transfers
        try:
            if op == "upload_begin":
                return {"upload": t.begin_upload(str(req.get("dest")), int(req.get("max_bytes") or 1 << 30))}
            if op == "upload_chunk":
                t.feed(str(req.get("upload")), base64.b64decode(str(req.get("data", ""))))
                return {}
            if op == "upload_end":
                return t.end_upload(str(req.get("upload")))
            if op == "upload_abort":
                t.abort_upload(str(req.get("upload")))
                return {}
            if op == "download_begin":
                return {"download": t.begin_download(str(req.get("path")))}
            if op == "download_next":
                data, eof = t.next_chunk(str(req.get("download")))
                return {"data": base64.b64encode(data).decode(), "eof": eof}
            t.close_download(str(req.get("download")))
            return {}
        except files.TransferError as exc:
            raise RequestError(str(exc), exc.kind) from exc

    def _handle(self, req: dict[str, Any]) -> None:
        rid = req.get("id")
        after: Callable[[], None] | None = None
        try:
            body, after = self._dispatch(req)
            reply = {"id": rid, "ok": True, **body}
        except RequestError as exc:
            reply = {"id": rid, "ok": False, "error": str(exc), "kind": exc.kind}
        except Exception as exc:  # report, never die
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": "internal"}
        with contextlib.suppress(OSError):
            self.send(reply)
        if after is not None:
            after()


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


def serve_port(config: AgentConfig, path: str, shells: WarmShells | None = None) -> None:
    """Serve the virtio-serial port forever; EOF means no host is connected: poll and go on."""
    fd = os.open(path, os.O_RDWR)
    agent = Agent(config, _write_all(fd), shells)
    decoder = protocol.FrameDecoder()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            raise
        if not data:
            decoder.reset()
            time.sleep(0.02)
            continue
        for req in decoder.feed(data):
            agent.handle(req)


def serve_connection(
    config: AgentConfig,
    conn: socket.socket,
    shells: WarmShells | None = None,
    transfers: files.Transfers | None = None,
) -> None:
    """Serve one stream connection until the peer closes it."""
    agent = Agent(config, conn.sendall, shells, transfers)
    decoder = protocol.FrameDecoder()
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for req in decoder.feed(data):
                agent.handle(req)


def serve_unix(config: AgentConfig, path: str, shells: WarmShells | None = None) -> None:
    """Listen on a Unix socket, one connection at a time (like a QEMU chardev)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    transfers = files.Transfers(config.workspace, GUEST_WORKSPACE, config.owner())
    while True:
        conn, _ = srv.accept()
        serve_connection(config, conn, shells, transfers)


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
    args = parser.parse_args(argv)

    if args.listen:
        config = AgentConfig(
            deno=args.deno,
            workspace=args.workspace,
            uid=None,
            gid=None,
            home=args.workspace,
            user=os.environ.get("USER", "user"),
            poweroff=lambda: os._exit(0),
            in_vm=False,
        )
        if not args.same_user:
            config.uid, config.gid = 1000, 1000
        serve_unix(config, args.listen, WarmShells(config))
        return 0

    config = AgentConfig(workspace=args.workspace, poweroff=_guest_poweroff)
    watch_power_button(_guest_poweroff)
    while True:
        path = find_port()
        if path is not None:
            break
        time.sleep(0.05)
    print(f"sheesh-agent: serving {path}", file=sys.stderr, flush=True)
    serve_port(config, path, WarmShells(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
