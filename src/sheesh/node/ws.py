"""The node agent's public WebSocket endpoints (Kyun protocol, port 1337).

Every endpoint takes a one-time token bound to one VM as ``?token=``: issued by the control plane
(``GET /v1/vms/:id/agentToken``), HMAC-signed, short-lived, and accepted once. A wrong, used or expired
token gets the connection accepted and closed with code 1008 and the reason.

- ``/serial``: the VM's serial console, bytes passed through unchanged in both directions (xterm.js style).
- ``/vnc``: the display of a full VM as a raw RFB stream (noVNC); the VNC password is the token's first
  8 characters, set on the VM's VNC server when the connection is admitted.
- ``/downloadIso?isoUrl=``, ``/cloudInit?imageUrl=[&password=&sshKey=]``: long operations reporting stages
  ``<n><message>`` and progress ``!PR<percent>``; a failure sends ``!ERR<message>``; the connection closes
  with 1000 on success only.
- ``/uploadIso``: the server sends ``gib`` for each chunk it wants; the client sends binary chunks of at
  most 1 MiB and the text ``EOF`` at the end; closes with 1000 once the ISO is mounted.

Media endpoints need a full VM (``kind: "full"``) but not a running one: a stopped VM gets the media at
its next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Lifespan
from starlette.websockets import WebSocket, WebSocketDisconnect

from sheesh.auth.sessions import InvalidSessionError, SessionSigner
from sheesh.errors import SheeshError, UnavailableError
from sheesh.node.agent import NodeAgent
from sheesh.node.errors import MediaError
from sheesh.node.media import MAX_UPLOAD_CHUNK, MediaBusyError, MediaService
from sheesh.node.metrics import metrics_endpoint
from sheesh.vmm.driver import SERIAL_SOCKET, VNC_SOCKET

log = logging.getLogger(__name__)
TOKEN_KIND = "agent"
NORMAL = 1000
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
# Server-to-client bytes of a password-protected RFB handshake up to the SecurityResult (3.7/3.8: version 12,
# security types 2, challenge 16, result 4; 3.3 sends the type as 4 bytes, so 36): once they passed, QEMU has
# checked the password and the next viewer may set its own.
VNC_AUTH_BYTES = 34
VNC_LOGIN_TIMEOUT_S = 10.0


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


class _WsReporter:
    """Stage and progress messages of a media operation, in the Kyun format."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def stage(self, number: int, message: str) -> None:
        await self.ws.send_text(f"{number}{message}")

    async def progress(self, percent: int) -> None:
        await self.ws.send_text(f"!PR{percent}")


async def _fail(ws: WebSocket, message: str, code: int) -> None:
    """``!ERR<message>``, then close with ``code`` (never 1000)."""
    with contextlib.suppress(Exception):
        await ws.send_text(f"!ERR{message}")
    with contextlib.suppress(Exception):
        await ws.close(code, message[:120])


def _close_code(exc: SheeshError) -> int:
    if isinstance(exc, MediaBusyError):
        return TRY_AGAIN_LATER
    return POLICY_VIOLATION if isinstance(exc, (MediaError, InvalidSessionError)) else INTERNAL_ERROR


class _Endpoints:
    """The handlers of one node app; ``media`` holds the ISO and image limits."""

    def __init__(self, node: NodeAgent, signer: SessionSigner, media: MediaService) -> None:
        self.node = node
        self.redeemer = TokenRedeemer(signer)
        self.media = media
        self.consoles: dict[str, asyncio.Lock] = {}
        self.logins: dict[str, asyncio.Lock] = {}  # per display: one VNC password in play at a time

    async def admit(
        self, ws: WebSocket, *, running: bool = True, full: bool = False, report: bool = False
    ) -> str | None:
        """Accept, redeem the token and check the VM; on failure close (``report``: after ``!ERR``)."""
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="binary" if "binary" in offered else None)
        try:
            vm_id = self.redeemer.redeem(ws.query_params.get("token"))
            if full:
                self.media.full_vm(vm_id)
            if running and not self.node.runs(vm_id):
                raise UnavailableError(f"VM {vm_id} is not running")
        except SheeshError as exc:
            if report:
                await _fail(ws, exc.message, POLICY_VIOLATION)
            else:
                await ws.close(POLICY_VIOLATION, exc.message[:120])
            return None
        return vm_id

    async def serial(self, ws: WebSocket) -> None:
        vm_id = await self.admit(ws)
        if vm_id is None:
            return
        lock = self.consoles.setdefault(vm_id, asyncio.Lock())
        if lock.locked():
            await ws.close(TRY_AGAIN_LATER, "the serial console is in use by another connection")
            return
        async with lock:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.node.workdir(vm_id) / SERIAL_SOCKET))
            except OSError:
                await ws.close(POLICY_VIOLATION, "the VM has no serial console")
                return
            await _bridge(ws, reader, writer)

    async def vnc(self, ws: WebSocket) -> None:
        """Viewers log in one at a time: the VNC password (this token's) stays until QEMU has checked it,
        so a second viewer cannot swap it mid-handshake; established sessions are unaffected."""
        vm_id = await self.admit(ws, full=True)
        if vm_id is None:
            return
        login = self.logins.setdefault(vm_id, asyncio.Lock())
        try:
            await asyncio.wait_for(login.acquire(), VNC_LOGIN_TIMEOUT_S)
        except TimeoutError:
            await ws.close(TRY_AGAIN_LATER, "another viewer is logging in to this display; try again")
            return
        try:
            await self.node.set_vnc_password(vm_id, ws.query_params["token"][:8])
            reader, writer = await asyncio.open_unix_connection(str(self.node.workdir(vm_id) / VNC_SOCKET))
        except (SheeshError, OSError) as exc:
            login.release()
            log.warning("%s: VNC login refused: %s", vm_id, exc)  # whole here; a close reason is cut at 123 bytes
            await ws.close(INTERNAL_ERROR, f"the VM's display is not available: {exc}"[:120])
            return
        authenticated = asyncio.Event()
        bridge = asyncio.create_task(_bridge(ws, reader, writer, authenticated, VNC_AUTH_BYTES))
        waiter = asyncio.create_task(authenticated.wait())
        try:
            try:
                await asyncio.wait({bridge, waiter}, timeout=VNC_LOGIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            finally:  # logged in, failed, timed out or cancelled: the next viewer may set its password
                login.release()
                waiter.cancel()
            await bridge
        finally:
            bridge.cancel()

    async def download_iso(self, ws: WebSocket) -> None:
        vm_id = await self.admit(ws, running=False, full=True, report=True)
        if vm_id is not None:
            await _operation(ws, self.media.download_iso(vm_id, ws.query_params.get("isoUrl"), _WsReporter(ws)))

    async def cloud_init(self, ws: WebSocket) -> None:
        vm_id = await self.admit(ws, running=False, full=True, report=True)
        if vm_id is not None:
            q = ws.query_params
            await _operation(
                ws, self.media.cloud_init(vm_id, q.get("imageUrl"), q.get("password"), q.get("sshKey"), _WsReporter(ws))
            )

    async def upload_iso(self, ws: WebSocket) -> None:
        vm_id = await self.admit(ws, running=False, full=True, report=True)
        if vm_id is not None:
            await _operation(ws, _receive_iso(ws, self.media, vm_id))


def create_node_app(
    node: NodeAgent,
    signer: SessionSigner,
    media: MediaService | None = None,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    lifespan: Lifespan[Starlette] | None = None,
) -> Starlette:
    """The node's WebSocket app; ``media`` sets the ISO and image limits (defaults: 10 GB, 64 GiB disks).
    A standalone node adds the contract routes (``extra_routes``) and its heartbeats (``lifespan``)."""
    ep = _Endpoints(node, signer, media or MediaService(node))
    return Starlette(
        lifespan=lifespan,
        routes=[
            *extra_routes,
            WebSocketRoute("/serial", ep.serial),
            WebSocketRoute("/vnc", ep.vnc),
            WebSocketRoute("/downloadIso", ep.download_iso),
            WebSocketRoute("/uploadIso", ep.upload_iso),
            WebSocketRoute("/cloudInit", ep.cloud_init),
            Route("/metrics", metrics_endpoint(node.status)),
        ],
    )


async def _operation(ws: WebSocket, run: Coroutine[Any, Any, None]) -> None:
    """Run a media operation: close 1000 when it succeeds, ``!ERR`` and an error code when it fails. A
    client that goes away cancels it (partial files are removed)."""
    task = asyncio.create_task(run)
    try:
        await task
    except SheeshError as exc:
        await _fail(ws, exc.message, _close_code(exc))
        return
    except WebSocketDisconnect:
        return
    except Exception as exc:
        log.exception("media operation failed")
        await _fail(ws, f"internal error: {type(exc).__name__}", INTERNAL_ERROR)
        return
    with contextlib.suppress(Exception):
        await ws.close(NORMAL)


async def _receive_iso(ws: WebSocket, media: MediaService, vm_id: str) -> None:
    """The ``gib`` / chunk / ``EOF`` upload loop, then mount."""
    async with media.operation(vm_id):
        path = media.upload_path(vm_id)
        total = 0
        try:
            with open(path, "wb") as fh:
                while True:
                    await ws.send_text("gib")
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        raise WebSocketDisconnect(message.get("code", 1005))
                    data = message.get("bytes")
                    if data is None:
                        if message.get("text") == "EOF":
                            break
                        raise MediaError("expected a binary chunk of the ISO or EOF")
                    if len(data) > MAX_UPLOAD_CHUNK:
                        raise MediaError(f"chunks must be at most {MAX_UPLOAD_CHUNK} bytes")
                    total += len(data)
                    if total > media.max_bytes:
                        raise MediaError(f"the ISO is larger than the maximum of {media.max_bytes} bytes")
                    media.check_space(vm_id, len(data))
                    await asyncio.to_thread(fh.write, data)
            if total == 0:
                raise MediaError("no data received before EOF")
            await media.mount_upload(vm_id)
        finally:
            path.unlink(missing_ok=True)


async def _bridge(
    ws: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    passed: asyncio.Event | None = None,
    mark: int = 0,
) -> None:
    """Copy WebSocket messages (text or binary) to the console and console output to binary messages;
    ``passed`` is set once ``mark`` bytes of console output went through."""

    async def to_console() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def from_console() -> None:
        sent = 0
        while data := await reader.read(65536):
            await ws.send_bytes(data)
            sent += len(data)
            if passed is not None and sent >= mark:
                passed.set()

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
