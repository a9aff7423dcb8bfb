"""Streaming exec: the records, the ``ExecStream`` seam, and the WebSocket message format (standard library only:
the SDK speaks it too).

The same messages cross ``GET /v1/vms/:id/exec/stream`` (the public API) and the node contract's
``/node/v1/exec_stream``; only the first message differs (the API takes the command, the node contract the
``StreamRequest`` in its wire form). After it:

client -> server
    binary frame                                   bytes for the command's stdin (or terminal)
    ``{"type": "stdin", "data": "text"}``          the same, as UTF-8 text
    ``{"type": "eof"}``                            close stdin (on a terminal: the EOF character, Ctrl-D)
    ``{"type": "kill"}``                           SIGKILL the command and everything it started
    ``{"type": "signal", "signal": "INT"}``        KILL, TERM, INT, HUP, QUIT, USR1 or USR2
    ``{"type": "resize", "rows": 40, "cols": 120}`` the terminal's new size (``pty`` only)

server -> client
    ``{"type": "started", "pid": 123}``            the command runs
    binary frame ``\\x01`` + bytes / ``\\x02`` + bytes   a chunk of stdout / stderr, unchanged
    ``{"type": "exit", "exitCode": 0, "timedOut": false, "truncated": false}``  last; then close 1000
    ``{"type": "error", "status": 409, "message": "..."}``  the stream could not start (then close
                                                    ``4000 + status``), or a message was refused (the
                                                    stream goes on)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

STDOUT = 1
STDERR = 2
ERROR_CLOSE_BASE = 4000
"""An error closes the WebSocket with 4000 + its HTTP status (4404, 4409, 4429, ...)."""
MAX_CONTROL_MESSAGE = 64 * 1024
SIGNAL_NAMES = ("KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2")
MAX_TERMINAL = 1000
"""Largest number of rows or columns of a terminal."""


class StreamProtocolError(ValueError):
    """A message that is not part of the format."""


@dataclass(frozen=True, kw_only=True)
class StreamRequest:
    """A command to stream: ``bash -lc cmd`` as uid/gid 1000, like exec; ``pty`` runs it on a terminal of
    ``rows`` x ``cols``."""

    cmd: str
    cwd: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    timeout_ms: int | None = None
    pty: bool = False
    rows: int = 24
    cols: int = 80


@dataclass(frozen=True, kw_only=True)
class StreamOutput:
    fd: int
    """``STDOUT`` or ``STDERR`` (a terminal's output is all stdout)"""
    data: bytes


@dataclass(frozen=True, kw_only=True)
class StreamExit:
    exit_code: int
    timed_out: bool = False
    truncated: bool = False


StreamEvent = StreamOutput | StreamExit


class ExecStream(Protocol):
    """A running streaming command. ``events`` yields its output as it comes and ends with one
    ``StreamExit``; the other methods act on it while it runs. ``close`` kills it if it has not ended."""

    pid: int

    def events(self) -> Any:
        """An async iterator of ``StreamEvent``; the last is a ``StreamExit``.

        :raise UnavailableError: the node or the guest went away while the command ran
        """
        ...

    async def write(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def signal(self, name: str) -> None:
        """:raise InvalidInputError: an unknown signal name"""
        ...

    async def resize(self, rows: int, cols: int) -> None:
        """:raise InvalidInputError: no terminal, or a size out of range"""
        ...

    async def close(self) -> None: ...


# --- messages -------------------------------------------------------------------------------------------------
def output_frame(event: StreamOutput) -> bytes:
    return bytes([event.fd]) + event.data


def parse_output_frame(frame: bytes) -> StreamOutput:
    if not frame or frame[0] not in (STDOUT, STDERR):
        raise StreamProtocolError("an output frame starts with 1 (stdout) or 2 (stderr)")
    return StreamOutput(fd=frame[0], data=frame[1:])


def exit_message(event: StreamExit) -> str:
    return json.dumps(
        {"type": "exit", "exitCode": event.exit_code, "timedOut": event.timed_out, "truncated": event.truncated}
    )


def error_message(status: int, message: str, error: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "status": status, "message": message}
    if error is not None:
        body["error"] = error
    return json.dumps(body)


def parse_json(text: str) -> dict[str, Any]:
    """A text message as a JSON object (``StreamProtocolError`` otherwise)."""
    if len(text) > MAX_CONTROL_MESSAGE:
        raise StreamProtocolError(f"a text message is at most {MAX_CONTROL_MESSAGE} characters")
    try:
        message = json.loads(text)
    except ValueError:
        raise StreamProtocolError("a text message must be a JSON object") from None
    if not isinstance(message, dict):
        raise StreamProtocolError("a text message must be a JSON object")
    return message


def parse_server_message(text: str) -> dict[str, Any]:
    """``started``, ``exit`` or ``error`` (checked for its fields)."""
    message = parse_json(text)
    kind = message.get("type")
    if kind == "exit" and isinstance(message.get("exitCode"), int):
        return message
    if kind == "started" or (kind == "error" and isinstance(message.get("message"), str)):
        return message
    raise StreamProtocolError(f"unexpected message from the server: {text[:200]}")


def exit_of(message: dict[str, Any]) -> StreamExit:
    return StreamExit(
        exit_code=int(message["exitCode"]),
        timed_out=bool(message.get("timedOut")),
        truncated=bool(message.get("truncated")),
    )


# --- client messages, as the client libraries write them -------------------------------------------------------
def stdin_eof() -> str:
    return json.dumps({"type": "eof"})


def signal_message(name: str) -> str:
    return json.dumps({"type": "kill"} if name.upper() in ("KILL", "SIGKILL") else {"type": "signal", "signal": name})


def resize_message(rows: int, cols: int) -> str:
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


async def apply_client_message(stream: ExecStream, text: str) -> None:
    """Carry out one control message on ``stream`` (``StreamProtocolError`` for a malformed one; the stream's
    own errors propagate)."""
    message = parse_json(text)
    kind = message.get("type")
    if kind == "stdin":
        data = message.get("data")
        if not isinstance(data, str):
            raise StreamProtocolError("stdin needs data (a string)")
        await stream.write(data.encode())
    elif kind == "eof":
        await stream.close_stdin()
    elif kind == "kill":
        await stream.signal("KILL")
    elif kind == "signal":
        name = message.get("signal")
        if not isinstance(name, str) or name.upper().removeprefix("SIG") not in SIGNAL_NAMES:
            raise StreamProtocolError(f"signal needs signal, one of {', '.join(SIGNAL_NAMES)}")
        await stream.signal(name.upper().removeprefix("SIG"))
    elif kind == "resize":
        rows, cols = message.get("rows"), message.get("cols")
        if not all(isinstance(v, int) and 1 <= v <= MAX_TERMINAL for v in (rows, cols)):
            raise StreamProtocolError(f"resize needs rows and cols (integers from 1 to {MAX_TERMINAL})")
        assert isinstance(rows, int) and isinstance(cols, int)
        await stream.resize(rows, cols)
    else:
        raise StreamProtocolError(f"unknown message type {kind!r}: stdin, eof, kill, signal or resize")
