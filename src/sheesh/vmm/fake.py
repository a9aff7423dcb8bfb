"""A VMM driver without a hypervisor: each "VM" is a host process running the real guest agent on a
Unix socket, with ``/workspace`` mapped to ``workdir/workspace``. For unit and integration tests."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from sheesh.vmm.driver import AGENT_SOCKET, SERIAL_LOG, STDERR_LOG, STDOUT_LOG, MachineSpec, VmmError
from sheesh.vmm.process import ManagedProcess, wait_for_paths


class FakeDriver:
    """Implements ``VmmDriver``. ``fail_start`` makes the next start fail, to test error paths."""

    name = "fake"

    def __init__(self) -> None:
        self._procs: dict[str, ManagedProcess] = {}
        self.fail_start = False
        self.powerdowns: list[str] = []

    async def create_disk(self, base: Path, disk: Path, size_mb: int) -> None:
        disk.write_text(json.dumps({"base": str(base), "size_mb": size_mb}))

    async def start(self, spec: MachineSpec) -> int:
        if self.fail_start:
            self.fail_start = False
            raise VmmError("fake start failure")
        workspace = spec.workdir / "workspace"
        workspace.mkdir(exist_ok=True)
        sock = spec.workdir / AGENT_SOCKET
        sock.unlink(missing_ok=True)
        (spec.workdir / SERIAL_LOG).open("a").write(f"fake boot of {spec.vm_id}\n")
        argv = [
            sys.executable,
            "-m",
            "sheesh.guest.agent",
            "--listen",
            str(sock),
            "--workspace",
            str(workspace),
            "--same-user",
        ]
        proc = ManagedProcess.spawn(argv, str(sock), spec.workdir / STDOUT_LOG, spec.workdir / STDERR_LOG)
        (spec.workdir / "vmm.pid").write_text(str(proc.pid))
        self._procs[spec.vm_id] = proc
        await wait_for_paths([sock], proc, 10.0)
        return proc.pid

    async def attach(self, vm_id: str, workdir: Path) -> bool:
        proc = ManagedProcess.adopt(workdir / "vmm.pid", str(workdir / AGENT_SOCKET))
        if proc is None:
            return False
        self._procs[vm_id] = proc
        return True

    def is_running(self, vm_id: str) -> bool:
        proc = self._procs.get(vm_id)
        return proc is not None and proc.alive()

    async def powerdown(self, vm_id: str) -> None:
        self.powerdowns.append(vm_id)
        if (proc := self._procs.get(vm_id)) is not None:
            proc.signal(signal.SIGTERM)

    async def wait_stopped(self, vm_id: str, timeout: float) -> bool:
        proc = self._procs.get(vm_id)
        return proc is None or await proc.wait(timeout)

    async def kill(self, vm_id: str) -> None:
        proc = self._procs.pop(vm_id, None)
        if proc is not None:
            await proc.terminate(grace=0.5)
