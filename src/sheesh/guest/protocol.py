"""Wire protocol between the node and the guest agent (standard library only).

A frame is ``MAGIC`` + 4-byte big-endian payload length + UTF-8 JSON object. The magic lets a reader
resynchronise after a peer reconnects mid-frame: bytes before the next magic are discarded.
Requests carry ``id`` (int) and ``op`` (str); responses echo ``id`` and carry either ``ok: true`` plus
op-specific fields, or ``ok: false`` and ``error`` (message) with ``kind`` (an ``ErrorKind``). Every reply
also names the agent process that sent it (``agent``): a different name than before means the agent was
restarted, and requests sent to the old one will never be answered. Every reply also says how long the agent
spent on the request (``took_ms``: from its decoded frame to its reply, as the guest's clock counts; an agent
that predates it does not say), so the host can tell the guest's share of a call from the channel's.

Streaming jobs (``exec_start``) also send frames nobody asked for: ``StreamOutput`` (a chunk of a stream's stdout
or stderr) and, last, ``StreamExit``; both carry ``stream`` (the id the host chose) and ``event`` instead of
``id``. The agent sends at most ``STREAM_WINDOW`` bytes of output a stream's host has not acknowledged
(``exec_ack``, which gets no reply): a slow reader slows the program down instead of filling memory.
"""

import json
import struct
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

MAGIC = b"\xa5SHx"
_LEN = struct.Struct(">I")
HEADER_SIZE = len(MAGIC) + _LEN.size
MAX_FRAME = 32 * 1024 * 1024
PORT_NAME = "sheesh.agent"
PROTOCOL_VERSION = 1
STREAM_WINDOW = 1024 * 1024
"""Output bytes of one stream in flight (sent, not yet acknowledged by ``exec_ack``)."""


class Op(StrEnum):
    """Every request the agent serves."""

    PING = "ping"
    REFRESH = "refresh"
    CLOCK = "clock"
    NET = "net"
    RESIZE_FS = "resize_fs"
    EXEC = "exec"
    RUN_TS = "run_ts"
    RUN_JS = "run_js"
    SYNC = "sync"
    SSH_AUTHORIZE = "ssh_authorize"
    UPLOAD_BEGIN = "upload_begin"
    UPLOAD_CHUNK = "upload_chunk"
    UPLOAD_END = "upload_end"
    UPLOAD_ABORT = "upload_abort"
    DOWNLOAD_BEGIN = "download_begin"
    DOWNLOAD_NEXT = "download_next"
    DOWNLOAD_CLOSE = "download_close"
    EXEC_START = "exec_start"
    EXEC_INPUT = "exec_input"
    EXEC_SIGNAL = "exec_signal"
    EXEC_RESIZE = "exec_resize"
    EXEC_ACK = "exec_ack"
    REHEARSE = "rehearse"
    WAKE = "wake"


NO_REPLY: frozenset[Op] = frozenset({Op.EXEC_ACK, Op.WAKE})
"""Ops the agent does not answer (the host sends them often and waits for nothing). ``wake`` does nothing: the
host sends it when a request for the guest has reached the API, ahead of the request itself (see
``Guests.wake``). An agent that predates it answers it with an error nobody waits for."""


class StreamEventKind(StrEnum):
    OUTPUT = "output"
    EXIT = "exit"


class ErrorKind(StrEnum):
    """Why a request failed: the node maps these to its own errors."""

    INVALID = "invalid"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    INTERNAL = "internal"


class ExecRequest(TypedDict):
    cmd: str
    cwd: NotRequired[str]
    env: NotRequired[dict[str, str]]
    timeout_ms: NotRequired[int | None]
    output_limit: NotRequired[int]


class ProgramReply(TypedDict):
    """What exec, run-ts and run-js answer."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool


class ExecStartRequest(TypedDict):
    """Start a streaming job; its output comes as ``StreamOutput`` frames, its end as ``StreamExit``. With
    ``pty`` the command runs on a pseudo-terminal of ``rows`` x ``cols`` (its stderr is the terminal too)."""

    stream: str
    cmd: str
    cwd: NotRequired[str]
    env: NotRequired[dict[str, str]]
    timeout_ms: NotRequired[int | None]
    output_limit: NotRequired[int | None]
    """Bytes per stream (None: no limit); past it output is read and dropped, and the exit says ``truncated``."""
    pty: NotRequired[bool]
    rows: NotRequired[int]
    cols: NotRequired[int]


class ExecStartReply(TypedDict):
    pid: int


class ExecInputRequest(TypedDict):
    stream: str
    data: NotRequired[str]
    """base64 bytes for the job's stdin (the terminal, with ``pty``)"""
    eof: NotRequired[bool]
    """close stdin after ``data`` (on a terminal: the EOF character)"""


class ExecSignalRequest(TypedDict):
    stream: str
    signal: str
    """a name: KILL (the whole job's cgroup), TERM, INT, HUP, QUIT, USR1, USR2"""


class ExecResizeRequest(TypedDict):
    stream: str
    rows: int
    cols: int


class ExecAckRequest(TypedDict):
    stream: str
    bytes: int


class StreamOutput(TypedDict):
    stream: str
    event: str
    """``output``"""
    fd: int
    """1 stdout, 2 stderr"""
    data: str
    """base64"""


class StreamExit(TypedDict):
    stream: str
    event: str
    """``exit``"""
    exit_code: int
    timed_out: bool
    truncated: bool


class ScriptRequest(TypedDict):
    code: NotRequired[str | None]
    path: NotRequired[str | None]
    args: NotRequired[list[str]]
    env: NotRequired[list[str]]
    deno_flags: NotRequired[list[str]]
    timeout_ms: NotRequired[int | None]
    output_limit: NotRequired[int]
    allow_net: NotRequired[bool | list[str]]
    error_stack: NotRequired[bool]


class ScriptReply(ProgramReply):
    result: NotRequired[object]
    error: NotRequired[object]


class NetRequest(TypedDict):
    ip: str
    prefix: int
    gateway: str
    mac: str
    dns: NotRequired[list[str]]


class RefreshRequest(TypedDict):
    seed: str
    time_ns: NotRequired[int]
    net: NotRequired[NetRequest]
    copy: NotRequired[bool]
    """Whether the machine is a copy (restored or cloned) whose programs share their random state with the
    original's: then its warm Deno is started again. Default true; false for a machine that refreshed once
    already since its restore and now resumes as itself under a new identity (a claimed warm spare)."""


class ClockRequest(TypedDict):
    """Set the guest's clock to the host's (after a pause: the guest's clock stood still meanwhile)."""

    time_ns: int


class ClockReply(TypedDict):
    done: bool
    """False when the agent may not set the machine's clock (not root, or not in a VM)."""


class RehearseReply(TypedDict):
    """``rehearse`` (no arguments): one run of a no-op through the ready warm Deno, the next one started after
    it as after any run-ts, so that (under emulation) the code of a run is translated before a real run needs
    it. A warm spare rehearses before it pauses."""

    rehearsed: bool
    """False when no warm Deno was ready."""


class PingReply(TypedDict):
    version: int
    boot_id: str
    warm: int
    deno: NotRequired[str]
    """The warm Deno: ``none``, ``starting`` (being started, or its start-up still uses the CPU) or ``ready``."""


class UploadBeginRequest(TypedDict):
    dest: str
    max_bytes: NotRequired[int]


class UploadChunkRequest(TypedDict):
    upload: str
    data: str
    """base64"""


class UploadRef(TypedDict):
    upload: str


class UploadReply(TypedDict):
    files: int
    bytes: int


class DownloadBeginRequest(TypedDict):
    path: str


class DownloadRef(TypedDict):
    download: str


class DownloadChunkReply(TypedDict):
    data: str
    """base64"""
    eof: bool


class SshAuthorizeRequest(TypedDict):
    keys: list[str]
    """root's authorized keys (OpenSSH lines): replace the previous ones."""
    host_key: NotRequired[str]
    """An OpenSSH private host key for a VM that has none yet (made by the host: faster than in the guest)."""
    host_key_pub: NotRequired[str]


class SshAuthorizeReply(TypedDict):
    hostkeys: list[str]


class Empty(TypedDict):
    pass


REQUESTS: dict[Op, type[Any]] = {
    Op.PING: Empty,
    Op.REFRESH: RefreshRequest,
    Op.CLOCK: ClockRequest,
    Op.NET: NetRequest,
    Op.RESIZE_FS: Empty,
    Op.EXEC: ExecRequest,
    Op.RUN_TS: ScriptRequest,
    Op.RUN_JS: ScriptRequest,
    Op.SYNC: Empty,
    Op.SSH_AUTHORIZE: SshAuthorizeRequest,
    Op.UPLOAD_BEGIN: UploadBeginRequest,
    Op.UPLOAD_CHUNK: UploadChunkRequest,
    Op.UPLOAD_END: UploadRef,
    Op.UPLOAD_ABORT: UploadRef,
    Op.DOWNLOAD_BEGIN: DownloadBeginRequest,
    Op.DOWNLOAD_NEXT: DownloadRef,
    Op.DOWNLOAD_CLOSE: DownloadRef,
    Op.EXEC_START: ExecStartRequest,
    Op.EXEC_INPUT: ExecInputRequest,
    Op.EXEC_SIGNAL: ExecSignalRequest,
    Op.EXEC_RESIZE: ExecResizeRequest,
    Op.EXEC_ACK: ExecAckRequest,
    Op.REHEARSE: Empty,
    Op.WAKE: Empty,
}
"""The request type of each op (the reply types are named beside them); the agent refuses a request that lacks
a required field before any handler sees it."""


def missing_fields(op: Op, request: dict[str, Any]) -> list[str]:
    """The required fields of ``op``'s request type that ``request`` lacks."""
    required: frozenset[str] = REQUESTS[op].__required_keys__
    return sorted(k for k in required if k not in request)


class ProtocolError(Exception):
    """A frame could not be encoded or decoded."""


def encode(message: dict[str, Any]) -> bytes:
    """Serialise one message into a frame."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return MAGIC + _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, get complete messages back, garbage skipped."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf.extend(data)
        out: list[dict[str, Any]] = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                # keep a possible partial magic at the end
                del self._buf[: max(0, len(self._buf) - (len(MAGIC) - 1))]
                return out
            if start:
                del self._buf[:start]
            if len(self._buf) < HEADER_SIZE:
                return out
            (length,) = _LEN.unpack_from(self._buf, len(MAGIC))
            if length > MAX_FRAME:
                del self._buf[: len(MAGIC)]
                continue
            if len(self._buf) < HEADER_SIZE + length:
                return out
            payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
            del self._buf[: HEADER_SIZE + length]
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            if isinstance(message, dict):
                out.append(message)
