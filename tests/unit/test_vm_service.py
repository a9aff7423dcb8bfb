"""VM lifecycle on fakes: state machine, conflicts, failure cleanup, recovery."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sheesh.config import Settings
from sheesh.control.ipam import allocate_ip
from sheesh.control.vms import CreateVm
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from sheesh.execstream import StreamRequest
from sheesh.models import ExecRequest, ScriptRequest, VmState, can_transition
from tests.fakes import fake_services

REQ = CreateVm(cpu=1, mem_mb=256, allow_ips=["172.16.0.1/32"])


def test_transitions_are_explicit() -> None:
    assert can_transition(VmState.RUNNING, VmState.STOPPING)
    assert not can_transition(VmState.STOPPED, VmState.STOPPING)
    assert not can_transition(VmState.DELETING, VmState.RUNNING)


def test_ipam_skips_gateway_and_used() -> None:
    assert allocate_ip("172.16.0.0/29", set()) == "172.16.0.2"
    assert allocate_ip("172.16.0.0/29", {"172.16.0.2", "172.16.0.3"}) == "172.16.0.4"
    with pytest.raises(UnavailableError):
        allocate_ip("172.16.0.0/30", {"172.16.0.2"})


async def test_create_stop_start_delete(settings: Settings) -> None:
    svc, node = fake_services(settings)
    vm = await svc.vms.create(REQ)
    assert vm.state == VmState.RUNNING and vm.guest_ip == "172.16.0.2" and vm.disk_size_mb == 1024
    second = await svc.vms.create(REQ)
    assert second.guest_ip == "172.16.0.3"
    await svc.vms.stop(vm.id)
    assert svc.vms.get(vm.id).state == VmState.STOPPED
    with pytest.raises(ConflictError):
        await svc.vms.stop(vm.id)
    with pytest.raises(ConflictError):
        await svc.execs.exec(vm.id, ExecRequest("true"))
    await svc.vms.start(vm.id)
    with pytest.raises(ConflictError):
        await svc.vms.start(vm.id)
    assert svc.vms.get(vm.id).state == VmState.RUNNING
    await svc.vms.delete(vm.id)
    with pytest.raises(NotFoundError):
        svc.vms.get(vm.id)
    assert [op for op, _ in node.calls] == ["create", "create", "stop", "start", "destroy"]


async def test_failed_create_leaves_nothing(settings: Settings) -> None:
    svc, node = fake_services(settings)
    node.fail_next = UnavailableError("no boot")
    with pytest.raises(UnavailableError):
        await svc.vms.create(REQ)
    assert svc.vms.list_vms() == []
    assert ("destroy", node.calls[0][1]) in node.calls


async def test_disk_size_and_references_are_validated(settings: Settings) -> None:
    svc, _ = fake_services(settings)
    with pytest.raises(InvalidInputError, match=">= the image"):
        await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], disk_size_mb=100))
    with pytest.raises(InvalidInputError, match="<="):
        await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], disk_size_mb=10**7))
    with pytest.raises(NotFoundError, match="image"):
        await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], image_id="img-nope"))
    with pytest.raises(NotFoundError, match="snapshot"):
        await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], snapshot_id="snap-nope"))
    vm = await svc.vms.create(CreateVm(cpu=1, mem_mb=256, allow_ips=[], disk_size_mb=512))
    assert vm.disk_size_mb == 512


async def test_exec_applies_default_timeout(settings: Settings) -> None:
    svc, _node = fake_services(settings)
    vm = await svc.vms.create(REQ)
    result = await svc.execs.exec(vm.id, ExecRequest("echo hi"))
    assert result.stdout == "echo hi" and result.exit_code == 0


async def test_guest_operations_ask_the_node_only_when_they_fail(settings: Settings) -> None:
    """A guest operation on a RUNNING VM goes straight to its node: asking first whether its machine runs cost
    each operation on a remote node a round trip. When the node refuses it and says the machine is gone, the
    store learns it and the caller gets ConflictError (409); when the machine still runs, the node's error
    stands."""
    svc, node = fake_services(settings)
    vm = await svc.vms.create(REQ)
    node.asked.clear()
    assert (await svc.execs.exec(vm.id, ExecRequest("true"))).exit_code == 0
    assert node.asked == []
    node.fail_next = UnavailableError("guest agent connection failed")
    with pytest.raises(UnavailableError, match="connection failed"):
        await svc.execs.exec(vm.id, ExecRequest("true"))
    assert node.asked == [vm.id] and svc.vms.get(vm.id).state == VmState.RUNNING

    async def body() -> AsyncIterator[bytes]:
        yield b"tar.gz"

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "exec": lambda: svc.execs.exec(vm.id, ExecRequest("true")),
        "exec_stream": lambda: svc.execs.exec_stream(vm.id, StreamRequest(cmd="true")),
        "run_ts": lambda: svc.execs.run_script(vm.id, ScriptRequest(code="1")),
        "upload": lambda: svc.execs.upload(vm.id, "/workspace", body()),
        "download": lambda: svc.execs.download(vm.id, "/workspace/x"),
    }
    node.running.discard(vm.id)  # the guest powered itself off
    for name, operation in operations.items():
        stale = svc.vms.get(vm.id)
        stale.state = VmState.RUNNING  # the store has not learnt it yet
        svc.store.save_vm(stale)
        with pytest.raises(ConflictError, match=f"VM {vm.id} is not running"):
            await operation()
        assert svc.vms.get(vm.id).state == VmState.STOPPED, name
        assert (name, vm.id) in node.calls
    assert not svc.vms._in_use, "a failed operation left its VM held"


async def test_operations_that_outlive_the_call_hold_the_vm_until_they_end(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream and a download keep their VM in use (never auto-paused) until they end; one whose start is
    cancelled (the client went away) or fails releases it at once."""
    svc, node = fake_services(settings)
    vm = await svc.vms.create(REQ)
    node.uploads[(vm.id, "/workspace")] = b"tar.gz"
    stream = await svc.execs.exec_stream(vm.id, StreamRequest(cmd="echo hi"))
    chunks = await svc.execs.download(vm, "/workspace")
    assert svc.vms._in_use[vm.id] == 2
    await stream.close_stdin()  # (the fake's command ends with its stdin)
    assert [type(event).__name__ async for event in stream.events()] == ["StreamOutput", "StreamExit"]
    assert svc.vms._in_use[vm.id] == 1
    del chunks  # dropped before its first chunk (the client left before the body began)
    assert not svc.vms._in_use
    chunks = await svc.execs.download(vm.id, "/workspace")
    assert [c async for c in chunks] == [b"tar.gz"] and not svc.vms._in_use
    chunks = await svc.execs.download(vm.id, "/workspace")
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]  # the client stopped reading
    assert not svc.vms._in_use
    started = asyncio.Event()

    async def stuck(*_: object) -> None:
        started.set()
        await asyncio.sleep(60)

    for name, start in (
        ("exec_stream", lambda: svc.execs.exec_stream(vm.id, StreamRequest(cmd="true"))),
        ("download", lambda: svc.execs.download(vm.id, "/workspace")),
    ):
        monkeypatch.setattr(node, name, stuck)
        started.clear()
        task = asyncio.create_task(start())
        await started.wait()
        assert svc.vms._in_use[vm.id] == 1, name
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not svc.vms._in_use, name
    history = svc.execs.exec_logs(vm.id, None, 10)
    assert [e.command for e in history] == ["echo hi"]  # a cancelled start is not a call that ran


async def test_reconcile_and_recover(settings: Settings) -> None:
    svc, node = fake_services(settings)
    a = await svc.vms.create(REQ)
    b = await svc.vms.create(REQ)
    node.running.discard(a.id)  # guest powered itself off
    await svc.vms.reconcile()
    assert svc.vms.get(a.id).state == VmState.STOPPED
    assert svc.vms.get(b.id).state == VmState.RUNNING
    # restart: b's process survived, a marked DELETING mid-delete is finished off
    vm = svc.vms.get(a.id)
    vm.state = VmState.DELETING
    svc.store.save_vm(vm)
    await svc.vms.recover()
    assert [v.id for v in svc.vms.list_vms()] == [b.id]
    node.running.clear()
    await svc.vms.recover()
    assert svc.vms.get(b.id).state == VmState.STOPPED


async def test_recover_removes_leftovers_without_records(settings: Settings) -> None:
    svc, node = fake_services(settings)
    vm = await svc.vms.create(REQ)
    node.leftovers |= {"tpl-0123456789ab", "vm-crashed"}
    await svc.vms.recover()
    assert ("destroy", "tpl-0123456789ab") in node.calls and ("destroy", "vm-crashed") in node.calls
    assert ("destroy", vm.id) not in node.calls
    assert await node.local_vms() == [vm.id]
