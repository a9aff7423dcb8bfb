"""The HTTP/1.1 protocol sheesh serves with: uvicorn's h11 protocol, with JSON answers to requests it cannot
parse and a lingering close, so clients read the answer instead of a connection reset.

uvicorn answers a request line or header block larger than ``MAX_HEAD_BYTES`` (or malformed) with a plain-text
400 and closes at once; a client still sending a 1 MB URL then gets a TCP reset. Here: 414 (URI too long) when
the request line alone is too long, 431 when the headers are, 400 for anything malformed, each as
``{"message": ...}``; then the write side is shut and what the client still sends is read and dropped for up
to ``LINGER_S`` seconds before the connection closes.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 16 * 1024
"""Largest request line plus headers (h11's limit in uvicorn)."""
LINGER_S = 2.0


class JsonErrorsH11Protocol(H11Protocol):
    """``H11Protocol`` with JSON errors for unparsable requests and a lingering close after them."""

    _head = b""
    _discarding = False

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if len(self._head) <= MAX_HEAD_BYTES:
            self._head += data[: MAX_HEAD_BYTES + 2]
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._head = b""
        super().on_response_complete()

    def eof_received(self) -> None:
        if self._discarding:
            self.transport.close()
            return
        super().eof_received()

    def send_400_response(self, msg: str) -> None:
        line_done = b"\r\n" in self._head
        if not line_done and len(self._head) > MAX_HEAD_BYTES:
            status, message = 414, f"the request line is longer than {MAX_HEAD_BYTES} bytes"
        elif line_done and len(self._head) >= MAX_HEAD_BYTES:
            status, message = 431, f"the request head is larger than {MAX_HEAD_BYTES} bytes"
        else:
            status, message = 400, "malformed HTTP request"
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
