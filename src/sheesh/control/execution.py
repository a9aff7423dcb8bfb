"""Running things in VMs' guests: exec, run-ts, run-js, file transfers, and the execution history."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sheesh.config import Settings
from sheesh.control.metrics import Metrics
from sheesh.control.vms import VmService
from sheesh.errors import PayloadTooLargeError, SheeshError
from sheesh.models import (
    ExecKind,
    ExecLog,
    ExecRequest,
    ExecResult,
    ScriptLanguage,
    ScriptRequest,
    ScriptResult,
)
from sheesh.store.repo import Store

EXEC_LOG_KEEP = 200
"""Execution history entries kept per VM (the oldest go first)."""
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


@dataclass
class ExecService:
    """Guest operations on running VMs; they run concurrently (lifecycle changes are ``VmService``'s)."""

    store: Store
    settings: Settings
    vms: VmService
    metrics: Metrics | None = None

    async def exec(self, vm_id: str, req: ExecRequest) -> ExecResult:
        await self.vms.running(vm_id, "exec")
        timeout = req.timeout_ms or self.settings.exec_max_timeout_ms
        limit = self.settings.exec_output_limit_bytes
        return await self._logged(
            vm_id,
            ExecKind.EXEC,
            req.cmd[:EXEC_LOG_COMMAND],
            lambda: self.vms.node_of(vm_id).exec(vm_id, ExecRequest(req.cmd, req.cwd, req.env, timeout), limit),
        )

    async def run_script(self, vm_id: str, req: ScriptRequest) -> ScriptResult:
        """run-ts or run-js. Deno gets network permission only where the VM has egress: all hosts with
        outbound internet, else the single addresses of its allowlist."""
        kind = ExecKind.RUN_TS if req.language == ScriptLanguage.TS else ExecKind.RUN_JS
        vm = await self.vms.running(vm_id, kind.value)
        allow_net: bool | list[str] = True if vm.outbound_internet else _single_hosts(vm.allow_ips)
        timeout = req.timeout_ms or self.settings.exec_max_timeout_ms
        req = dataclasses.replace(req, timeout_ms=timeout)
        code = req.code or ""
        what = req.path or "sha256:" + hashlib.sha256(code.encode()).hexdigest()
        limit = self.settings.exec_output_limit_bytes
        return await self._logged(
            vm_id, kind, what, lambda: self.vms.node_of(vm_id).run_script(vm_id, req, allow_net, limit)
        )

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
            entry = ExecLog(
                id=f"xl-{secrets.token_hex(8)}",
                vm_id=vm_id,
                kind=kind,
                command=command,
                started_at=started,
                duration_ms=round((time.monotonic() - t0) * 1000, 1),
                exit_code=result.exit_code if result else None,
                timed_out=result.timed_out if result else False,
                stdout_tail=_tail(result.stdout) if result else "",
                stderr_tail=_tail(result.stderr) if result else "",
                error=error if result is None else None,
            )
            if self.store.get_vm(vm_id) is not None:  # not when the VM was deleted meanwhile
                self.store.add_exec_log(entry, EXEC_LOG_KEEP)

    def exec_logs(self, vm_id: str, kind: ExecKind | None, limit: int) -> list[ExecLog]:
        self.vms.get(vm_id)
        return self.store.list_exec_logs(vm_id, kind, limit)

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes]) -> dict[str, int]:
        """Upload a tar.gz; more than ``upload_max_bytes`` compressed raises PayloadTooLargeError."""
        await self.vms.running(vm_id, "upload")
        limit = self.settings.upload_max_bytes

        async def counted() -> AsyncIterator[bytes]:
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(f"upload exceeds {limit} bytes (compressed)")
                yield chunk

        return await self.vms.node_of(vm_id).upload(vm_id, dest, counted(), self.settings.upload_max_expanded_bytes)

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        await self.vms.running(vm_id, "download")
        return await self.vms.node_of(vm_id).download(vm_id, path)
