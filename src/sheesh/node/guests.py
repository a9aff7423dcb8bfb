"""A node's conversations with the guest agents of its VMs (one ``GuestClient`` per VM): exec, run-ts and
run-js, file transfers, identity refresh and network settings, all as ``protocol.Op`` requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from sheesh.errors import InvalidInputError, SheeshError, UnavailableError
from sheesh.execstream import StreamEvent, StreamExit, StreamOutput, StreamRequest
from sheesh.guest.protocol import Op, StreamEventKind
from sheesh.models import ExecRequest, ExecResult, GuestTiming, ScriptLanguage, ScriptRequest, ScriptResult
from sheesh.node.guest_client import GuestClient
from sheesh.node.plumbing import GuestNet

EXEC_GRACE_S = 5.0
"""How much longer than a program's own timeout the node waits (the guest enforces the timeout)."""
TRANSFER_CHUNK = 256 * 1024
TRANSFER_TIMEOUT_S = 60.0
SSH_TIMEOUT_S = 30.0
"""Making host keys under TCG can take seconds when the VM was just restored."""
STREAM_START_TIMEOUT_S = 30.0
STREAM_CALL_TIMEOUT_S = 30.0
STDIN_TIMEOUT_S = 24 * 3600.0
"""Writing stdin waits as long as the program does not read it (the agent is pinged meanwhile)."""
ACK_EVERY = 64 * 1024
CLOCK_TIMEOUT_S = 2.0
REHEARSE_TIMEOUT_S = 90.0
"""A rehearsal's run is a no-op (the guest times it out after 60 s)."""
WARM_S = 0.02
"""An agent heard from this recently is in a guest that is still warm: ``wake`` leaves it alone."""


async def _rechunk(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    buf = bytearray()
    async for chunk in chunks:
        buf.extend(chunk)
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _finished(reply: dict[str, Any]) -> dict[str, Any]:
    """The fields every program run answers with."""
    return {
        "exit_code": int(reply["exit_code"]),
        "stdout": str(reply["stdout"]),
        "stderr": str(reply["stderr"]),
        "timed_out": bool(reply.get("timed_out")),
        "truncated": bool(reply.get("truncated")),
    }


def _timing(reply: dict[str, Any], node_ms: float) -> GuestTiming:
    """A program run's timing: the call took ``node_ms`` here, the agent says how long it took (``took_ms``)."""
    took = reply.get("took_ms")
    guest_ms = float(took) if isinstance(took, int | float) and not isinstance(took, bool) else None
    return GuestTiming(node_ms=round(node_ms, 3), guest_ms=guest_ms)


def host_key() -> tuple[str, str]:
    """A new SSH host key: the OpenSSH private key and its public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " root@sheesh"
    return private, public


class GuestStream:
    """A streaming job in a guest (``ExecStream``): its frames arrive in ``queue`` (see ``GuestClient``); output
    is acknowledged as the consumer takes it, so the agent never has more than its window in flight."""

    def __init__(
        self, client: GuestClient, stream: str, queue: asyncio.Queue[dict[str, Any] | SheeshError], pid: int
    ) -> None:
        self._client = client
        self._stream = stream
        self._queue = queue
        self.pid = pid
        self.ended = False

    async def events(self) -> AsyncIterator[StreamEvent]:
        unacked = 0
        while not self.ended:
            item = await self._queue.get()
            if isinstance(item, SheeshError):
                self.ended = True
                raise item
            if item.get("event") == StreamEventKind.EXIT:
                self.ended = True
                self._client.unsubscribe(self._stream)
                yield StreamExit(
                    exit_code=int(item["exit_code"]),
                    timed_out=bool(item.get("timed_out")),
                    truncated=bool(item.get("truncated")),
                )
                return
            data = base64.b64decode(str(item.get("data", "")))
            yield StreamOutput(fd=int(item.get("fd", 1)), data=data)
            unacked += len(data)  # the consumer took it: room for more
            if unacked >= ACK_EVERY or self._queue.empty():
                self._client.notify(Op.EXEC_ACK, stream=self._stream, bytes=unacked)
                unacked = 0

    async def _call(self, op: Op, timeout_s: float = STREAM_CALL_TIMEOUT_S, **args: Any) -> None:
        if self.ended:
            raise UnavailableError("the command has ended")
        await self._client.call(op, timeout_s, stream=self._stream, **args)

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), TRANSFER_CHUNK):
            chunk = base64.b64encode(data[start : start + TRANSFER_CHUNK]).decode()
            await self._call(Op.EXEC_INPUT, STDIN_TIMEOUT_S, data=chunk)

    async def close_stdin(self) -> None:
        await self._call(Op.EXEC_INPUT, STDIN_TIMEOUT_S, eof=True)

    async def signal(self, name: str) -> None:
        await self._call(Op.EXEC_SIGNAL, signal=name)

    async def resize(self, rows: int, cols: int) -> None:
        await self._call(Op.EXEC_RESIZE, rows=rows, cols=cols)

    async def close(self) -> None:
        """Kill the job if it still runs, and stop listening for it."""
        if not self.ended:
            with contextlib.suppress(SheeshError):
                await self._call(Op.EXEC_SIGNAL, signal="KILL")
        self.ended = True
        self._client.unsubscribe(self._stream)


class Guests:
    """The guest agents of one node's VMs, reached through each VM's agent socket."""

    def __init__(self, socket_of: Callable[[str], Path]) -> None:
        self._socket_of = socket_of
        self._clients: dict[str, GuestClient] = {}

    def client(self, vm_id: str) -> GuestClient:
        client = self._clients.get(vm_id)
        if client is None:
            client = GuestClient(self._socket_of(vm_id))
            self._clients[vm_id] = client
        return client

    def rename(self, vm_id: str, new_id: str, socket: Path) -> None:
        """The VM is ``new_id`` now and its agent socket at ``socket``: its connection (if open) stays."""
        client = self._clients.pop(vm_id, None)
        if client is not None:
            client.socket_path = socket
            self._clients[new_id] = client

    def wake(self, vm_id: str) -> None:
        """Tell the VM's agent a request for it is on its way (``Op.WAKE``), if connected; never waits.

        Under emulation a guest that sat idle for more than ~20 ms runs its first request ~3 ms slower (its
        translated code and TLB state are cold again); the API sends this as a request arrives, so the guest
        wakes while the control plane authenticates and checks the request (exec round trip after 300 ms idle
        p50 -3 ms). Not sent to an agent heard from in the last ``WARM_S``: that guest is still warm, and the
        frame would only cost it a read (a back-to-back stream of execs is bound by the guest's CPU)."""
        client = self._clients.get(vm_id)
        if client is not None and time.monotonic() - client.heard_at >= WARM_S:
            client.notify(Op.WAKE)

    async def drop(self, vm_id: str) -> None:
        client = self._clients.pop(vm_id, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        for vm_id in list(self._clients):
            await self.drop(vm_id)

    async def wait_ready(
        self,
        vm_id: str,
        timeout_s: float,
        alive: Callable[[], bool],
        refresh: bool,
        net: GuestNet | None,
        *,
        copy: bool = True,
    ) -> bool:
        """Wait for the agent of a booted or restored machine. A restored machine's first request is the
        identity refresh (fresh entropy, current time, new boot id), which doubles as the readiness probe and
        carries the NIC settings (one round trip less per clone). ``copy`` false: the machine refreshed once
        already since its restore (a claimed spare), its warm Deno is its own (``protocol.RefreshRequest``).
        Returns whether the NIC was set."""
        probe: dict[str, Any] = {}
        if refresh:
            probe = {"op": Op.REFRESH, "seed": base64.b64encode(os.urandom(64)).decode(), "time_ns": time.time_ns()}
            if net is not None:
                probe["net"] = dataclasses.asdict(net)
            if not copy:
                probe["copy"] = False
        answer = await self.client(vm_id).wait_ready(timeout_s, alive=alive, **probe)
        return "net" in answer

    async def set_clock(self, vm_id: str) -> None:
        """The host's time into the guest (after a pause); a guest that cannot answer at once is left as is."""
        with contextlib.suppress(SheeshError):
            await self.client(vm_id).call(Op.CLOCK, CLOCK_TIMEOUT_S, time_ns=time.time_ns())

    async def configure_net(self, vm_id: str, net: GuestNet) -> list[str]:
        reply = await self.client(vm_id).call(Op.NET, 10, **dataclasses.asdict(net))
        return list(reply.get("steps") or [])

    async def ping(self, vm_id: str) -> dict[str, Any]:
        return await self.client(vm_id).call(Op.PING, 5)

    async def rehearse(self, vm_id: str) -> bool:
        """A no-op run through the guest's ready warm Deno (``protocol.RehearseReply``); False when it had none
        ready, or its agent does not know the op."""
        try:
            reply = await self.client(vm_id).call(Op.REHEARSE, REHEARSE_TIMEOUT_S)
        except InvalidInputError:
            return False
        return bool(reply.get("rehearsed"))

    async def sync(self, vm_id: str) -> None:
        with contextlib.suppress(SheeshError):
            await self.client(vm_id).call(Op.SYNC, 30)

    async def resize_fs(self, vm_id: str) -> None:
        await self.client(vm_id).call(Op.RESIZE_FS, 10)

    async def authorize_ssh(self, vm_id: str, public_keys: Sequence[str]) -> list[str]:
        """Root's authorized keys; the guest's SSH server starts with its first call, with a host key made here
        (ed25519 takes a moment under emulation) unless the VM has its own already."""
        private, public = host_key()
        reply = await self.client(vm_id).call(
            Op.SSH_AUTHORIZE, SSH_TIMEOUT_S, keys=list(public_keys), host_key=private, host_key_pub=public
        )
        return [str(k) for k in reply.get("hostkeys", [])]

    async def _run(self, vm_id: str, op: Op, timeout_ms: int | None, **args: Any) -> tuple[dict[str, Any], GuestTiming]:
        """A program-running op: the guest enforces ``timeout_ms``; we wait a grace period longer (a dead or
        restarted agent fails the call at once, see ``GuestClient``). The reply, and the call's timing."""
        wait = (timeout_ms / 1000 if timeout_ms else 24 * 3600) + EXEC_GRACE_S
        client = self.client(vm_id)
        t0 = time.perf_counter()
        reply = await client.call(op, wait, timeout_ms=timeout_ms, **args)
        return reply, _timing(reply, (time.perf_counter() - t0) * 1000)

    async def exec(self, vm_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        args = {"cmd": req.cmd, "cwd": req.cwd, "env": req.env, "output_limit": output_limit}
        reply, timing = await self._run(vm_id, Op.EXEC, req.timeout_ms, **args)
        return ExecResult(**_finished(reply), timing=timing)

    async def exec_stream(self, vm_id: str, req: StreamRequest, output_limit: int | None) -> GuestStream:
        """Start a streaming job (errors of the start raise here); its output comes through the stream."""
        client = self.client(vm_id)
        stream = uuid.uuid4().hex
        queue = client.subscribe(stream)
        args = {"cmd": req.cmd, "cwd": req.cwd, "env": req.env, "timeout_ms": req.timeout_ms, "pty": req.pty}
        try:
            reply = await client.call(
                Op.EXEC_START,
                STREAM_START_TIMEOUT_S,
                stream=stream,
                output_limit=output_limit,
                rows=req.rows,
                cols=req.cols,
                **args,
            )
        except BaseException:
            client.unsubscribe(stream)
            raise
        return GuestStream(client, stream, queue, int(reply["pid"]))

    async def run_script(
        self, vm_id: str, req: ScriptRequest, allow_net: bool | list[str], output_limit: int
    ) -> ScriptResult:
        reply, timing = await self._run(
            vm_id,
            Op.RUN_TS if req.language == ScriptLanguage.TS else Op.RUN_JS,
            req.timeout_ms,
            code=req.code,
            path=req.path,
            args=req.args,
            env=req.env,
            deno_flags=req.deno_flags,
            output_limit=output_limit,
            allow_net=allow_net,
            error_stack=req.error_stack,
        )
        return ScriptResult(
            **_finished(reply),
            result=reply.get("result"),
            has_result="result" in reply,
            error=reply.get("error"),
            timing=timing,
        )

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes], max_expanded: int) -> dict[str, int]:
        """Stream a tar.gz into the guest (one chunk in flight); extracted only if the whole archive is valid.
        An exception from ``chunks`` aborts the upload in the guest and propagates."""
        guest = self.client(vm_id)
        key = (await guest.call(Op.UPLOAD_BEGIN, TRANSFER_TIMEOUT_S, dest=dest, max_bytes=max_expanded))["upload"]
        try:
            async for chunk in _rechunk(chunks, TRANSFER_CHUNK):
                data = base64.b64encode(chunk).decode()
                await guest.call(Op.UPLOAD_CHUNK, TRANSFER_TIMEOUT_S, upload=key, data=data)
        except BaseException:
            with contextlib.suppress(SheeshError):
                await guest.call(Op.UPLOAD_ABORT, TRANSFER_TIMEOUT_S, upload=key)
            raise
        reply = await guest.call(Op.UPLOAD_END, TRANSFER_TIMEOUT_S, upload=key)
        return {"files": int(reply["files"]), "bytes": int(reply["bytes"])}

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        """Start a tar.gz of ``path`` (errors raise here, before any byte) and return its chunk stream."""
        guest = self.client(vm_id)
        key = (await guest.call(Op.DOWNLOAD_BEGIN, TRANSFER_TIMEOUT_S, path=path))["download"]

        async def stream() -> AsyncIterator[bytes]:
            done = False
            try:
                while not done:
                    reply = await guest.call(Op.DOWNLOAD_NEXT, TRANSFER_TIMEOUT_S, download=key)
                    done = bool(reply["eof"])
                    if data := base64.b64decode(reply["data"]):
                        yield data
            finally:
                if not done:
                    with contextlib.suppress(SheeshError):
                        await guest.call(Op.DOWNLOAD_CLOSE, TRANSFER_TIMEOUT_S, download=key)

        return stream()
