"""Running things in VMs' guests: exec, run-ts, run-js, file transfers, and the execution history."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sheesh.config import Settings
from sheesh.control.metrics import Metrics
from sheesh.control.vms import VmRef, VmService
from sheesh.errors import PayloadTooLargeError, SheeshError
from sheesh.execstream import STDOUT, ExecStream, StreamEvent, StreamExit, StreamOutput, StreamRequest
from sheesh.models import (
    ExecKind,
    ExecLog,
    ExecRequest,
    ExecResult,
    ScriptLanguage,
    ScriptRequest,
    ScriptResult,
    Vm,
)
from sheesh.store.repo import Store

EXEC_LOG_TAIL = 2048
"""Characters of stdout/stderr kept in each history entry (the end of the output)."""
EXEC_LOG_COMMAND = 2048
_R = TypeVar("_R", ExecResult, ScriptResult)


def _single_hosts(cidrs: list[str]) -> list[str]:
    """The addresses of the host-sized networks (/32, /128) in ``cidrs``."""
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return [str(n.network_address) for n in nets if n.num_addresses == 1]


def _tail(text: str) -> str:
    return text[-EXEC_LOG_TAIL:]


class LoggedStream:
    """An ``ExecStream`` that adds its outcome to the VM's execution history when it ends (or is closed)."""

    def __init__(self, stream: ExecStream, record: Callable[[StreamExit | None, str, str, str | None], None]) -> None:
        self._stream = stream
        self._record = record
        self.pid = stream.pid
        self._tails = {STDOUT: bytearray(), 2: bytearray()}
        self._done = False

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            async for event in self._stream.events():
                if isinstance(event, StreamOutput):
                    tail = self._tails.setdefault(event.fd, bytearray())
                    tail.extend(event.data)
                    del tail[:-EXEC_LOG_TAIL]
                else:
                    self._end(event, None)
                yield event
        except SheeshError as exc:
            self._end(None, exc.message)
            raise

    def _end(self, exit: StreamExit | None, error: str | None) -> None:
        if not self._done:
            self._done = True
            out, err = (self._tails[fd].decode(errors="replace") for fd in (STDOUT, 2))
            self._record(exit, out, err, error)

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close_stdin(self) -> None:
        await self._stream.close_stdin()

    async def signal(self, name: str) -> None:
        await self._stream.signal(name)

    async def resize(self, rows: int, cols: int) -> None:
        await self._stream.resize(rows, cols)

    async def close(self) -> None:
        self._end(None, "the client left before the command ended: it was killed")
        await self._stream.close()


def _released(chunks: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    """``chunks``, then ``release``: at their end, when the client stops reading, or when the stream is dropped
    before its first chunk (the client left before the body began: a generator never started runs no
    ``finally``)."""

    async def passed() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            release()

    stream = passed()
    weakref.finalize(stream, release)  # (``release`` runs once however many times it is called)
    return stream


@dataclass
class ExecService:
    """Guest operations on running VMs; they run concurrently (lifecycle changes are ``VmService``'s)."""

    store: Store
    settings: Settings
    vms: VmService
    metrics: Metrics | None = None

    async def exec(self, vm_ref: VmRef, req: ExecRequest) -> ExecResult:
        async with self.vms.in_use(vm_ref, "exec") as vm:
            vm_id = vm.id
            node = self.vms.nodes.of(vm)
            timeout = req.timeout_ms or self.settings.exec_max_timeout_ms
            limit = self.settings.exec_output_limit_bytes
            request = ExecRequest(req.cmd, req.cwd, req.env, timeout)
            return await self._logged(
                vm_id, ExecKind.EXEC, req.cmd[:EXEC_LOG_COMMAND], lambda: node.exec(vm_id, request, limit)
            )

    async def exec_stream(self, vm_ref: VmRef, req: StreamRequest) -> ExecStream:
        """Start a streaming command (``sheesh.execstream``). Like exec, each output stream is capped at the
        exec output limit and the timeout at the exec maximum (the default); a terminal session is neither
        capped nor timed out unless it asks (it ends with its shell or its client)."""
        timeout = req.timeout_ms or (None if req.pty else self.settings.exec_max_timeout_ms)
        limit = None if req.pty else self.settings.exec_output_limit_bytes
        started = datetime.now(UTC)
        t0 = time.monotonic()
        record: Callable[[StreamExit | None, str, str, str | None], None] | None = None
        try:
            async with self.vms.in_use_after(vm_ref, "exec") as (vm, release):

                def ended(exit: StreamExit | None, stdout: str, stderr: str, error: str | None) -> None:
                    release()
                    self._add_log(
                        vm.id,
                        ExecKind.EXEC,
                        command=req.cmd,
                        started=started,
                        t0=t0,
                        outcome=exit,
                        output=(stdout, stderr),
                        error=error,
                    )

                record = ended
                stream = await self.vms.nodes.of(vm).exec_stream(
                    vm.id, dataclasses.replace(req, timeout_ms=timeout), limit
                )
        except SheeshError as exc:
            if record is not None:  # (not for a VM that is not running: nothing was asked of its node)
                record(None, "", "", exc.message)
            raise
        return LoggedStream(stream, ended)

    def _add_log(
        self,
        vm_id: str,
        kind: ExecKind,
        *,
        command: str,
        started: datetime,
        t0: float,
        outcome: ExecResult | ScriptResult | StreamExit | None,
        output: tuple[str, str],
        error: str | None,
    ) -> None:
        """Add a call to the VM's execution history (written behind the answer: ``history.ExecHistory``)."""
        entry = ExecLog(
            id=f"xl-{secrets.token_hex(8)}",
            vm_id=vm_id,
            kind=kind,
            command=command[:EXEC_LOG_COMMAND],
            started_at=started,
            duration_ms=round((time.monotonic() - t0) * 1000, 1),
            exit_code=outcome.exit_code if outcome else None,
            timed_out=outcome.timed_out if outcome else False,
            stdout_tail=_tail(output[0]),
            stderr_tail=_tail(output[1]),
            error=error if outcome is None else None,
        )
        self.vms.history.add(entry)

    async def run_script(self, vm_ref: VmRef, req: ScriptRequest) -> ScriptResult:
        """run-ts or run-js. Deno gets network permission only where the VM has egress: all hosts with
        outbound internet, else the single addresses of its allowlist."""
        kind = ExecKind.RUN_TS if req.language == ScriptLanguage.TS else ExecKind.RUN_JS
        async with self.vms.in_use(vm_ref, kind.value) as vm:
            vm_id = vm.id
            allow_net: bool | list[str] = True if vm.outbound_internet else _single_hosts(vm.allow_ips)
            timeout = req.timeout_ms or self.settings.exec_max_timeout_ms
            req = dataclasses.replace(req, timeout_ms=timeout)
            code = req.code or ""
            what = req.path or "sha256:" + hashlib.sha256(code.encode()).hexdigest()
            limit = self.settings.exec_output_limit_bytes
            node = self.vms.nodes.of(vm)
            return await self._logged(vm_id, kind, what, lambda: node.run_script(vm_id, req, allow_net, limit))

    async def _logged(self, vm_id: str, kind: ExecKind, command: str, run: Callable[[], Awaitable[_R]]) -> _R:
        """Run ``run`` and add the outcome (or the failure) to the VM's execution history."""
        started = datetime.now(UTC)
        t0 = time.monotonic()
        result: _R | None = None
        error: str | None = None
        try:
            result = await run()
            return result
        except SheeshError as exc:
            error = exc.message
            raise
        finally:
            if self.metrics is not None:
                self.metrics.exec_seconds.labels(kind.value).observe(time.monotonic() - t0)
            output = (result.stdout, result.stderr) if result else ("", "")
            self._add_log(
                vm_id, kind, command=command, started=started, t0=t0, outcome=result, output=output, error=error
            )

    def exec_logs(self, vm_id: str, kind: ExecKind | None, limit: int) -> list[ExecLog]:
        self.vms.get(vm_id)
        return self.vms.history.list(vm_id, kind, limit)

    async def upload(self, vm_ref: VmRef, dest: str, chunks: AsyncIterator[bytes]) -> dict[str, int]:
        """Upload a tar.gz; more than ``upload_max_bytes`` compressed raises PayloadTooLargeError."""
        async with self.vms.in_use(vm_ref, "upload") as vm:
            return await self._upload(vm, dest, chunks)

    async def _upload(self, vm: Vm, dest: str, chunks: AsyncIterator[bytes]) -> dict[str, int]:
        limit = self.settings.upload_max_bytes

        async def counted() -> AsyncIterator[bytes]:
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(f"upload exceeds {limit} bytes (compressed)")
                yield chunk

        return await self.vms.nodes.of(vm).upload(vm.id, dest, counted(), self.settings.upload_max_expanded_bytes)

    async def download(self, vm_ref: VmRef, path: str) -> AsyncIterator[bytes]:
        async with self.vms.in_use_after(vm_ref, "download") as (vm, release):
            chunks = await self.vms.nodes.of(vm).download(vm.id, path)
        return _released(chunks, release)
