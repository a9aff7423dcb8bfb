"""Wire protocol between the node and the guest agent (standard library only).

A frame is ``MAGIC`` + 4-byte big-endian payload length + UTF-8 JSON object. The magic lets a reader
resynchronise after a peer reconnects mid-frame: bytes before the next magic are discarded.
Requests carry ``id`` (int) and ``op`` (str); responses echo ``id`` and carry either ``ok: true`` plus
op-specific fields, or ``ok: false`` and ``error`` (message) with ``kind`` (an ``ErrorKind``). Every reply
also names the agent process that sent it (``agent``): a different name than before means the agent was
restarted, and requests sent to the old one will never be answered.
"""

from __future__ import annotations

import json
import struct
from enum import StrEnum
from typing import Any

MAGIC = b"\xa5SHx"
_LEN = struct.Struct(">I")
HEADER_SIZE = len(MAGIC) + _LEN.size
MAX_FRAME = 32 * 1024 * 1024
PORT_NAME = "sheesh.agent"
PROTOCOL_VERSION = 1


class Op(StrEnum):
    """Every request the agent serves."""

    PING = "ping"
    REFRESH = "refresh"
    NET = "net"
    RESIZE_FS = "resize_fs"
    EXEC = "exec"
    RUN_TS = "run_ts"
    RUN_JS = "run_js"
    SYNC = "sync"
    UPLOAD_BEGIN = "upload_begin"
    UPLOAD_CHUNK = "upload_chunk"
    UPLOAD_END = "upload_end"
    UPLOAD_ABORT = "upload_abort"
    DOWNLOAD_BEGIN = "download_begin"
    DOWNLOAD_NEXT = "download_next"
    DOWNLOAD_CLOSE = "download_close"


class ErrorKind(StrEnum):
    """Why a request failed: the node maps these to its own errors."""

    INVALID = "invalid"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    INTERNAL = "internal"


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
