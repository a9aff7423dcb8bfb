"""The fake node the control plane's unit tests run on. The seam itself, ``NodeClient``, is part of the node
contract (``sheesh.node.contract``), which ``NodeAgent`` implements in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from sheesh.execstream import STDOUT, StreamEvent, StreamExit, StreamOutput, StreamRequest
from sheesh.models import ExecRequest, ExecResult, GuestTiming, ScriptRequest, ScriptResult
from sheesh.node.contract import (
    NodeCapacity,
    NodeClient,
    NodeStatus,
    NodeVmSpec,
    SnapshotInfo,
    VmNet,
    VmUsage,
    VpnSpec,
)

__all__ = ["FakeExecStream", "FakeNodeClient", "NodeClient"]


class FakeExecStream:
    """A streaming command that behaves like ``echo <cmd>; cat``: the command line comes out first, then
    stdin is echoed back; the end of stdin ends it with 0, KILL with 137. ``resizes`` keeps the sizes asked."""

    def __init__(self, req: StreamRequest) -> None:
        self.pid = 4242
        self.req = req
        self.resizes: list[tuple[int, int]] = []
        self.closed = False
        self._queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self._queue.put_nowait(StreamOutput(fd=STDOUT, data=req.cmd.encode() + b"\n"))

    async def events(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, StreamExit):
                return

    async def write(self, data: bytes) -> None:
        self._queue.put_nowait(StreamOutput(fd=STDOUT, data=data))

    async def close_stdin(self) -> None:
        self._queue.put_nowait(StreamExit(exit_code=0))

    async def signal(self, name: str) -> None:
        if name.upper() not in ("KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2"):
            raise InvalidInputError(f"unknown signal {name!r}")
        self._queue.put_nowait(StreamExit(exit_code=137 if name.upper() == "KILL" else 130))

    async def resize(self, rows: int, cols: int) -> None:
        if not self.req.pty:
            raise InvalidInputError("this job has no terminal to resize (start it with pty)")
        self.resizes.append((rows, cols))

    async def close(self) -> None:
        self.closed = True


NO_TIME = GuestTiming(node_ms=0.0, guest_ms=0.0)


class FakeNodeClient:
    """A node without VMs: records calls, runs nothing; ``exec`` returns ``exec_result`` or echoes. Its program
    runs report their timing like a node's (``NO_TIME``: nothing ran)."""

    name = "fake"

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail_next: Exception | None = None
        self.exec_result: ExecResult | None = None
        self.uploads: dict[tuple[str, str], bytes] = {}
        self.snapshots: set[str] = set()
        self.leftovers: set[str] = set()
        self.specs: dict[str, NodeVmSpec] = {}
        self.networks: dict[str, VmNet] = {}
        self.exits: dict[str, str | None] = {}
        self.authorized: dict[str, list[str]] = {}
        self.vpns: dict[str, VpnSpec] = {}
        self.asked: list[str] = []
        """VMs ``is_running`` was asked about."""
        self.streams: list[FakeExecStream] = []

    def _record(self, op: str, vm_id: str) -> None:
        self.calls.append((op, vm_id))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def _require_running(self, vm_id: str) -> None:
        """As the node agent refuses a guest operation on a VM whose machine does not run."""
        if vm_id not in self.running:
            raise UnavailableError(f"VM {vm_id} is not running")

    async def create(self, spec: NodeVmSpec) -> None:
        self._record("create", spec.vm_id)
        if spec.vm_id in self.running:
            raise ConflictError(f"VM {spec.vm_id} already runs on node {self.name}")
        if spec.snapshot_id is not None and spec.snapshot_id not in self.snapshots:
            raise NotFoundError(f"snapshot {spec.snapshot_id} has no files")
        self.specs[spec.vm_id] = spec
        self.running.add(spec.vm_id)

    async def start(self, spec: NodeVmSpec) -> None:
        self._record("start", spec.vm_id)
        self.running.add(spec.vm_id)

    async def stop(self, vm_id: str) -> None:
        self._record("stop", vm_id)
        self.running.discard(vm_id)

    async def destroy(self, vm_id: str) -> None:
        self._record("destroy", vm_id)
        self.vpns.pop(vm_id, None)
        self.running.discard(vm_id)
        self.leftovers.discard(vm_id)

    async def is_running(self, vm_id: str) -> bool:
        self.asked.append(vm_id)
        return vm_id in self.running

    async def exit_reason(self, vm_id: str) -> str | None:
        return self.exits.get(vm_id)

    async def local_vms(self) -> list[str]:
        return sorted(self.running | self.leftovers)

    async def ensure_network(self) -> bool:
        return False

    async def reattach(self, vm_ids: Sequence[str]) -> set[str]:
        for vm_id in vm_ids:
            self._record("reattach", vm_id)
        return set(vm_ids) & self.running

    async def exec(self, vm_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        self._record("exec", vm_id)
        self._require_running(vm_id)
        return self.exec_result or ExecResult(0, req.cmd, "", timing=NO_TIME)

    async def exec_stream(self, vm_id: str, req: StreamRequest, output_limit: int | None) -> FakeExecStream:
        self._record("exec_stream", vm_id)
        self._require_running(vm_id)
        self.streams.append(FakeExecStream(req))
        return self.streams[-1]

    async def run_script(
        self, vm_id: str, req: ScriptRequest, allow_net: bool | list[str], output_limit: int
    ) -> ScriptResult:
        self._record(f"run_{req.language}", vm_id)
        self._require_running(vm_id)
        code = req.code or req.path or ""
        return ScriptResult(0, code, "", result={"allowNet": allow_net}, has_result=True, timing=NO_TIME)

    async def upload(self, vm_id: str, dest: str, chunks: AsyncIterator[bytes], max_expanded: int) -> dict[str, int]:
        self._record("upload", vm_id)
        self._require_running(vm_id)
        data = b"".join([c async for c in chunks])
        self.uploads[(vm_id, dest)] = data
        return {"files": 1, "bytes": len(data)}

    async def download(self, vm_id: str, path: str) -> AsyncIterator[bytes]:
        self._record("download", vm_id)
        self._require_running(vm_id)
        payload = self.uploads.get((vm_id, path))
        if payload is None:
            raise NotFoundError(f"{path} does not exist")

        async def stream() -> AsyncIterator[bytes]:
            yield payload

        return stream()

    async def authorize_ssh(self, vm_id: str, public_keys: Sequence[str]) -> list[str]:
        self._record("authorize_ssh", vm_id)
        if vm_id not in self.running:
            raise UnavailableError(f"VM {vm_id} is not running")
        self.authorized[vm_id] = list(public_keys)
        return [f"ssh-ed25519 AAAAfake{vm_id} root@sheesh"]

    async def start_vpn(self, spec: VpnSpec) -> None:
        self._record("start_vpn", spec.vm_id)
        if spec.vm_id not in self.specs:
            raise NotFoundError(f"VM {spec.vm_id} is not on this node")
        self.vpns[spec.vm_id] = spec

    async def stop_vpn(self, vm_id: str) -> None:
        self._record("stop_vpn", vm_id)
        self.vpns.pop(vm_id, None)

    async def eject_cdrom(self, vm_id: str) -> None:
        self._record("eject_cdrom", vm_id)

    async def update_network(self, vm_id: str, net: VmNet) -> None:
        self._record("update_network", vm_id)
        self.networks[vm_id] = net

    async def log_tail(self, vm_id: str, kind: str, lines: int) -> list[str]:
        return [f"{kind} line {i}" for i in range(5)][-lines:]

    async def snapshot(self, vm_id: str, snapshot_id: str, sync_guest: bool = True) -> SnapshotInfo:
        self._record("snapshot" if sync_guest else "snapshot-nosync", vm_id)
        if vm_id not in self.running:
            raise UnavailableError(f"VM {vm_id} is not running")
        self.snapshots.add(snapshot_id)
        return SnapshotInfo(snapshot_id=snapshot_id, save_ms=1.0)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        self._record("delete_snapshot", snapshot_id)
        self.snapshots.discard(snapshot_id)

    async def keep_spares(self, spec: NodeVmSpec) -> None:
        if spec.snapshot_id not in self.snapshots:
            raise NotFoundError(f"snapshot {spec.snapshot_id} has no files on this node")
        self._record("keep_spares", spec.snapshot_id)

    async def pause(self, vm_id: str) -> None:
        self._record("pause", vm_id)

    async def resume(self, vm_id: str) -> None:
        self._record("resume", vm_id)

    async def ping(self, vm_id: str) -> dict[str, Any]:
        return {"warm": 2}

    async def usage(self, vm_id: str) -> VmUsage | None:
        """A quarter of the VM's memory, and a tenth of a CPU second per call (a fake machine's work)."""
        self._record("usage", vm_id)
        if vm_id not in self.running:
            return None
        spent = sum(1 for op, v in self.calls if op == "usage" and v == vm_id) * 0.1
        return VmUsage(cpu_s=spent, mem_mb=self.specs[vm_id].mem_mb / 4, at_s=time.time())

    async def status(self) -> NodeStatus:
        capacity = NodeCapacity(vcpus=8, mem_mb=16384, disk_mb=100_000, disk_free_mb=90_000)
        return NodeStatus(name=self.name, capacity=capacity, running=tuple(sorted(self.running)))

    async def close(self) -> None:
        self.calls.append(("close", ""))
