"""VM lifecycle on fakes: state machine, conflicts, failure cleanup, recovery."""

import pytest

from sheesh.config import Settings
from sheesh.control.ipam import allocate_ip
from sheesh.control.vms import CreateVm
from sheesh.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from sheesh.models import ExecRequest, VmState, can_transition
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
