"""A node on another host, driven over the node contract's HTTP form (``sheesh.node.server``).

``RemoteNode`` implements ``NodeClient`` with httpx: every operation of ``CONTRACT_OPS`` is one POST; short
operations time out after ``timeout_s``, long ones (create, exec, snapshot, ...) wait as long as the work
takes; a refused connection is tried again (``retries`` times, with a short backoff), and so is any transport
failure of an operation the contract marks idempotent. A node that cannot be reached raises
``UnavailableError`` naming it (503), and errors the node reports come back as the same ``SheeshError``
classes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sheesh.errors import InvalidInputError, RateLimitedError, SheeshError, UnavailableError
from sheesh.execstream import (
    StreamEvent,
    StreamProtocolError,
    StreamRequest,
    exit_of,
    parse_output_frame,
    parse_server_message,
    resize_message,
    signal_message,
    stdin_eof,
)
from sheesh.models import ExecRequest, ExecResult, ScriptRequest, ScriptResult
from sheesh.node.contract import (
    CONTRACT_OPS,
    CONTRACT_PREFIX,
    NodeStatus,
    NodeVmSpec,
    SnapshotInfo,
    VmNet,
    VmUsage,
    VpnSpec,
    error_class,
    from_wire,
    to_wire,
)

log = logging.getLogger(__name__)
STREAM_CHUNK = 256 * 1024
WS_MAX_MESSAGE = 2 * 1024 * 1024


def _raise_error_message(message: dict[str, Any]) -> None:
    cls = error_class(str(message.get("error")))
    text = str(message.get("message"))
    if cls is RateLimitedError:
        raise RateLimitedError(text, 1)
    raise cls(text)


class RemoteExecStream:
    """A streaming command on a remote node: the node contract's ``/node/v1/exec_stream`` WebSocket."""

    def __init__(self, node: str, ws: ClientConnection, pid: int, req: StreamRequest) -> None:
        self._node = node
        self._ws = ws
        self.pid = pid
        self._pty = req.pty

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    yield parse_output_frame(message)
                    continue
                parsed = parse_server_message(message)
                if parsed["type"] == "exit":
                    yield exit_of(parsed)
                    return
                if parsed["type"] == "error":  # a control message the node refused; the command goes on
                    log.warning("node %s refused a stream message: %s", self._node, parsed.get("message"))
        except (ConnectionClosed, OSError, StreamProtocolError) as exc:
            raise UnavailableError(f"node {self._node} broke off the stream: {exc}") from exc
        raise UnavailableError(f"node {self._node} closed the stream before the command ended")

    async def _send(self, message: str | bytes) -> None:
        try:
            await self._ws.send(message)
        except (ConnectionClosed, OSError) as exc:
            raise UnavailableError(f"node {self._node} broke off the stream: {exc}") from exc

    async def write(self, data: bytes) -> None:
        await self._send(data)

    async def close_stdin(self) -> None:
        await self._send(stdin_eof())

    async def signal(self, name: str) -> None:
        await self._send(signal_message(name))

    async def resize(self, rows: int, cols: int) -> None:
        if not self._pty:  # what the node would refuse, refused here (its refusals arrive later, in the stream)
            raise InvalidInputError("this job has no terminal to resize (start it with pty)")
        await self._send(resize_message(rows, cols))

    async def close(self) -> None:
        await self._ws.close()


class RemoteNode:
    """``NodeClient`` of the node ``name`` serving the contract at ``base_url`` (``http(s)://host:port``)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self._token = token
        self._ssl = verify
        self._http = httpx.AsyncClient(
            base_url=self.base_url + CONTRACT_PREFIX,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            transport=transport,
        )

    def _timeout(self, long: bool) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, read=None if long else self.timeout_s)

    def _raise_for(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
            cls, message = error_class(str(body["error"])), str(body["message"])
        except (ValueError, KeyError, TypeError):
            raise UnavailableError(f"node {self.name} answered {response.status_code}") from None
        if cls is RateLimitedError:
            raise RateLimitedError(message, int(body.get("retryAfterS", 1)))
        raise cls(message)

    async def _send(self, build: Callable[[], Awaitable[httpx.Response]], *, idempotent: bool) -> httpx.Response:
        """Send the request ``build()`` makes. A refused connection (the node never saw the request) is tried
        again for every operation; other transport failures only for idempotent ones."""
        for attempt in range(1 + self.retries):
            try:
                return await build()
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt < self.retries and (never_sent or idempotent):
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                raise UnavailableError(f"node {self.name} is unreachable: {type(exc).__name__} {exc}") from exc
        raise AssertionError("unreachable")

    async def invoke(self, name: str, **args: Any) -> Any:
        """Run the contract operation ``name`` on the node; its result decoded."""
        op = CONTRACT_OPS[name]
        body = {arg: to_wire(value) for arg, value in args.items()}
        response = await self._send(
            lambda: self._http.post(f"/{name}", json=body, timeout=self._timeout(op.long)),
            idempotent=op.idempotent,
        )
        self._raise_for(response)
        if op.result is None:
            return None
        return from_wire(op.result, response.json()["result"])

    async def create(self, spec: NodeVmSpec) -> None:
        await self.invoke("create", spec=spec)

    async def start(self, spec: NodeVmSpec) -> None:
        await self.invoke("start", spec=spec)

    async def stop(self, vm_id: str) -> None:
        await self.invoke("stop", vm_id=vm_id)

    async def destroy(self, vm_id: str) -> None:
        await self.invoke("destroy", vm_id=vm_id)

    async def is_running(self, vm_id: str) -> bool:
        result: bool = await self.invoke("is_running", vm_id=vm_id)
        return result

    async def exit_reason(self, vm_id: str) -> str | None:
        result: str | None = await self.invoke("exit_reason", vm_id=vm_id)
        return result

    async def local_vms(self) -> list[str]:
        result: list[str] = await self.invoke("local_vms")
        return result

    async def ensure_network(self) -> bool:
        result: bool = await self.invoke("ensure_network")
        return result

    async def reattach(self, vm_ids: Sequence[str]) -> set[str]:
        return set(await self.invoke("reattach", vm_ids=list(vm_ids)))

    async def exec(self, vm_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        result: ExecResult = await self.invoke("exec", vm_id=vm_id, req=req, output_limit=output_limit)
        return result

    async def exec_stream(self, vm_id: str, req: StreamRequest, output_limit: int | None) -> RemoteExecStream:
        url = self.base_url.replace("http", "ws", 1) + CONTRACT_PREFIX + "/exec_stream"
        tls: ssl.SSLContext | None = None
        if url.startswith("wss:"):
            tls = self._ssl if isinstance(self._ssl, ssl.SSLContext) else ssl.create_default_context()
            if self._ssl is False:
                tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        try:
            ws = await websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                ssl=tls,
                max_size=WS_MAX_MESSAGE,
                open_timeout=self.timeout_s,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise UnavailableError(f"node {self.name} is unreachable: {type(exc).__name__} {exc}") from exc
        try:
            await ws.send(json.dumps({"vm_id": vm_id, "req": to_wire(req), "output_limit": output_limit}))
            first = parse_server_message(str(await asyncio.wait_for(ws.recv(), self.timeout_s * 6)))
            if first["type"] == "error":
                _raise_error_message(first)
            if first["type"] != "started":
                raise InvalidInputError(f"node {self.name} answered the stream with {first['type']}")
            return RemoteExecStream(self.name, ws, int(first.get("pid", 0)), req)
        except SheeshError:
            await ws.close()
            raise
        except (ConnectionClosed, OSError, TimeoutError, StreamProtocolError) as exc:
            await ws.close()
            raise UnavailableError(f"node {self.name} broke off the stream: {exc}") from exc

    async def snapshot(self, vm_id: str, snapshot_id: str, sync_guest: bool = True) -> SnapshotInfo:
        result: SnapshotInfo = await self.invoke(
            "snapshot", vm_id=vm_id, snapshot_id=snapshot_id, sync_guest=sync_guest
        )
        return result

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.invoke("delete_snapshot", snapshot_id=snapshot_id)

    async def keep_spares(self, spec: NodeVmSpec) -> None:
        await self.invoke("keep_spares", spec=spec)

    async def pause(self, vm_id: str) -> None:
        await self.invoke("pause", vm_id=vm_id)

    async def resume(self, vm_id: str) -> None:
        await self.invoke("resume", vm_id=vm_id)

    async def ping(self, vm_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.invoke("ping", vm_id=vm_id)
        return result

    async def run_script(
        self, vm_id: str, req: ScriptRequest, allow_net: bool | list[str], output_limit: int
    ) -> ScriptResult:
        result: ScriptResult = await self.invoke(
            "run_script", vm_id=vm_id, req=req, allow_net=allow_net, output_limit=output_limit
        )
        return result

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes], max_expanded: int) -> dict[str, int]:
        params = {"vm_id": vm_id, "dest": dest, "max_expanded": str(max_expanded)}
        response = await self._send(
            lambda: self._http.put("/upload", params=params, content=chunks, timeout=self._timeout(True)),
            idempotent=False,
        )
        self._raise_for(response)
        return {str(k): int(v) for k, v in response.json()["result"].items()}

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        request = self._http.build_request(
            "GET", "/download", params={"vm_id": vm_id, "path": path}, timeout=self._timeout(True)
        )
        response = await self._send(lambda: self._http.send(request, stream=True), idempotent=True)
        if not response.is_success:
            await response.aread()
            await response.aclose()
            self._raise_for(response)

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_bytes(STREAM_CHUNK):
                    yield chunk
            except httpx.TransportError as exc:
                raise UnavailableError(f"node {self.name} broke off the download: {exc}") from exc
            finally:
                await response.aclose()

        return stream()

    async def authorize_ssh(self, vm_id: str, public_keys: Sequence[str]) -> list[str]:
        result: list[str] = await self.invoke("authorize_ssh", vm_id=vm_id, public_keys=list(public_keys))
        return result

    async def start_vpn(self, spec: VpnSpec) -> None:
        await self.invoke("start_vpn", spec=spec)

    async def stop_vpn(self, vm_id: str) -> None:
        await self.invoke("stop_vpn", vm_id=vm_id)

    async def update_network(self, vm_id: str, net: VmNet) -> None:
        await self.invoke("update_network", vm_id=vm_id, net=net)

    async def eject_cdrom(self, vm_id: str) -> None:
        await self.invoke("eject_cdrom", vm_id=vm_id)

    async def log_tail(self, vm_id: str, kind: str, lines: int) -> list[str]:
        result: list[str] = await self.invoke("log_tail", vm_id=vm_id, kind=kind, lines=lines)
        return result

    async def usage(self, vm_id: str) -> VmUsage | None:
        result: VmUsage | None = await self.invoke("usage", vm_id=vm_id)
        return result

    async def status(self) -> NodeStatus:
        result: NodeStatus = await self.invoke("status")
        return result

    async def close(self) -> None:
        """Close the connections to the node (the node and its VMs go on)."""
        await self._http.aclose()
