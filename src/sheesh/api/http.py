"""The HTTP/1.1 protocol sheesh serves with: uvicorn's httptools protocol (llhttp, the fast parser), with a limit
on the request head, JSON answers to requests it cannot parse, and a lingering close, so clients read the answer
instead of a connection reset.

uvicorn answers a malformed request with a plain-text 400 and closes at once (a client still sending gets a TCP
reset), and llhttp itself puts no bound on a request line or header block. Here: 414 (URI too long) when the
request line alone passes ``MAX_HEAD_BYTES``, 431 when the head does, 400 for anything malformed, each as
``{"message": ...}``; then the write side is shut and what the client still sends is read and dropped for up
to ``LINGER_S`` seconds before the connection closes.

The head is counted in the bytes received while it is incomplete; for a pipelined request whose head starts in
the middle of what was received, counting starts with the next read (at most one read's worth over the limit).

uvicorn writes a request's access-log line before the response's first byte; here it is written once the step
of the event loop that sends the response is over (``AccessLogAfter``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024
"""Largest request line plus headers."""
LINGER_S = 2.0


class AccessLogAfter:
    """The access logger uvicorn's protocol is given: its ``info`` (the one call uvicorn makes, as the response
    starts) is run by ``loop`` once the current step, which writes the response, is over. The line's formatting
    and writing cost an exec's answer 0.15 ms after an idle gap."""

    def __init__(self, logger: logging.Logger, loop: asyncio.AbstractEventLoop) -> None:
        self.logger = logger
        self._loop = loop

    def info(self, msg: str, *args: object) -> None:
        self._loop.call_soon(self.logger.info, msg, *args)


class JsonErrorsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a bounded request head, JSON errors for unparsable requests and a lingering
    close after them, and its access log written after the response (``AccessLogAfter``)."""

    _between = True
    """No request in progress: the next read starts one."""
    _in_head = False
    """Between the start of a request and the end of its headers."""
    _counted = False
    """The read being parsed was counted from its first byte (the request starts there)."""
    _head = b""
    """The current request's head as received (at least its first ``MAX_HEAD_BYTES`` bytes)."""
    _head_bytes = 0
    _discarding = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_logger = AccessLogAfter(self.access_logger, self.loop)  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._between or self._in_head:
            if self._between:
                self._head, self._head_bytes, self._counted = b"", 0, True
            scan = self._head[-3:] + data  # the head ends with an empty line, maybe split across reads
            end = scan.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - (len(scan) - len(data))
            if len(self._head) <= MAX_HEAD_BYTES:
                self._head += data[: MAX_HEAD_BYTES + 2]
            if self._head_bytes > MAX_HEAD_BYTES:
                self._too_large()
                return
        super().data_received(data)
        self._counted = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._counted:  # pipelined: it starts inside this read, counting starts with the next one
            self._head, self._head_bytes = b"", 0
        self._between, self._in_head, self._counted = False, True, False

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._between = True
        super().on_message_complete()

    def eof_received(self) -> None:
        if self._discarding:
            self.transport.close()

    def _too_large(self) -> None:
        if b"\r\n" in self._head:
            self._json_error(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        else:
            self._json_error(414, f"the request line is longer than {MAX_HEAD_BYTES} bytes")

    def send_400_response(self, msg: str) -> None:
        self._json_error(400, "malformed HTTP request")

    def _json_error(self, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._linger()

    def _linger(self) -> None:
        """Stop writing, drop what the client still sends, close after ``LINGER_S`` (or its EOF)."""
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)
