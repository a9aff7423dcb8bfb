"""The node agent's public WebSocket endpoints (Kyun protocol, port 1337).

Every endpoint takes a one-time token bound to one VM as ``?token=``: issued by the control plane
(``GET /v1/vms/:id/agentToken``), HMAC-signed, short-lived, and accepted once. A wrong, used or expired
token gets the connection accepted and closed with code 1008 and the reason.

- ``/serial``: the VM's serial console, bytes passed through unchanged in both directions (xterm.js style).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from sheesh.auth.sessions import InvalidSessionError, SessionSigner
from sheesh.node.agent import NodeAgent
from sheesh.vmm.driver import SERIAL_SOCKET

TOKEN_KIND = "agent"
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class TokenRedeemer:
    """Checks agent tokens and remembers used ones until they expire (single use)."""

    def __init__(self, signer: SessionSigner) -> None:
        self.signer = signer
        self._used: dict[str, float] = {}

    def redeem(self, token: str | None) -> str:
        """The VM id the token is for; raises InvalidSessionError if it is wrong, expired or used."""
        if not token:
            raise InvalidSessionError("token query parameter required")
        claims = self.signer.verify(token, TOKEN_KIND)
        now = time.time()
        self._used = {n: exp for n, exp in self._used.items() if exp > now}
        if claims.nonce in self._used:
            raise InvalidSessionError("token already used")
        self._used[claims.nonce] = claims.expires_at
        return claims.subject


def create_node_app(node: NodeAgent, signer: SessionSigner) -> Starlette:
    redeemer = TokenRedeemer(signer)
    consoles: dict[str, asyncio.Lock] = {}

    async def admit(ws: WebSocket) -> str | None:
        await ws.accept()
        try:
            vm_id = redeemer.redeem(ws.query_params.get("token"))
        except InvalidSessionError as exc:
            await ws.close(POLICY_VIOLATION, exc.message)
            return None
        if not node.is_running(vm_id):
            await ws.close(POLICY_VIOLATION, f"VM {vm_id} is not running")
            return None
        return vm_id

    async def serial(ws: WebSocket) -> None:
        vm_id = await admit(ws)
        if vm_id is None:
            return
        lock = consoles.setdefault(vm_id, asyncio.Lock())
        if lock.locked():
            await ws.close(TRY_AGAIN_LATER, "the serial console is in use by another connection")
            return
        async with lock:
            try:
                reader, writer = await asyncio.open_unix_connection(str(node.workdir(vm_id) / SERIAL_SOCKET))
            except OSError:
                await ws.close(POLICY_VIOLATION, "the VM has no serial console")
                return
            await _bridge(ws, reader, writer)

    return Starlette(routes=[WebSocketRoute("/serial", serial)])


async def _bridge(ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy WebSocket messages (text or binary) to the console and console output to binary messages."""

    async def to_console() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def from_console() -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(data)

    tasks = [asyncio.create_task(to_console()), asyncio.create_task(from_console())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await ws.close()
