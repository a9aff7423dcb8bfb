"""Warm spares on the fake VMM and network: made after a create from a snapshot, claimed by the next create of
the same kind (folder, process, tap and guest connection renamed), discarded with their snapshot, at close and,
if an earlier node process left them, at the next start. The driver seam's ``rename`` on the fake (the same
check runs on QEMU in ``tests/vm/test_qemu_qmp_sessions.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sheesh.errors import NotFoundError
from sheesh.models import ExecRequest
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeVmSpec, VmNet
from sheesh.node.network import FakeNetwork, NetConfig
from sheesh.node.warmpool import SPARE_PREFIX
from sheesh.vmm.driver import MachineSpec
from sheesh.vmm.fake import FakeDriver
from tests.vmm_contract import check_rename

CFG = NetConfig("shtest0", "10.78.0.0/16")


def _spec(tmp: Path, vm_id: str, ip: str, snapshot: str | None = None, mem_mb: int = 256) -> NodeVmSpec:
    return NodeVmSpec(
        vm_id=vm_id,
        cpu=1,
        mem_mb=mem_mb,
        kernel=tmp / "k",
        initrd=tmp / "i",
        rootfs=tmp / "r",
        disk_size_mb=1024,
        snapshot_id=snapshot,
        snapshot_disk_mb=1024 if snapshot else None,
        net=VmNet(vm_id=vm_id, ip=ip),
    )


async def _ready_spares(node: NodeAgent, count: int = 1) -> list[str]:
    for _ in range(500):
        if len(node.spares.ready()) >= count:
            return node.spares.ready()
        await asyncio.sleep(0.01)
    raise AssertionError("no spare was made")


async def _sh(node: NodeAgent, vm_id: str, cmd: str) -> str:
    result = await node.exec(vm_id, ExecRequest(cmd=cmd, cwd="."), 4096)
    assert result.exit_code == 0, result
    return result.stdout


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeAgent]:
    agent = NodeAgent(
        tmp_path / "vms", FakeDriver(), network=FakeNetwork(CFG), snapshots_dir=tmp_path / "snaps", warm_spares=1
    )
    yield agent
    await agent.spares.drop()
    for vm_id in await agent.local_vms():
        await agent.destroy(vm_id)


async def test_the_next_create_of_a_kind_claims_the_spare_the_first_left(node: NodeAgent, tmp_path: Path) -> None:
    network = node.network
    assert isinstance(network, FakeNetwork)
    await node.create(_spec(tmp_path, "vm-src", "10.78.0.2"))
    await _sh(node, "vm-src", "echo kept > f")
    await node.snapshot("vm-src", "snap-1")
    await node.create(_spec(tmp_path, "vm-a", "10.78.0.3", "snap-1"))  # restored: no spare yet
    [spare] = await _ready_spares(node)
    assert spare.startswith(SPARE_PREFIX) and spare not in await node.local_vms()
    assert VmNet(vm_id=spare, ip="10.78.0.3").tap in network.spares, "a spare's tap is off the bridge"
    assert spare not in {n.vm_id for n in network.applied}, "and it has no rules"

    await node.create(_spec(tmp_path, "vm-b", "10.78.0.4", "snap-1"))
    assert spare not in node.spares.ready()
    assert await _sh(node, "vm-b", "cat f") == "kept\n"
    assert not node.driver.is_running(spare) and node.driver.is_running("vm-b")
    assert (tmp_path / "vms" / "vm-b" / "disk.qcow2").exists()
    assert node.spec_of("vm-b").net == VmNet(vm_id="vm-b", ip="10.78.0.4")
    spare_tap = VmNet(vm_id=spare, ip="10.78.0.3").tap
    assert VmNet(vm_id="vm-b", ip="10.78.0.4").tap in network.taps, "the spare's tap is the VM's now"
    assert spare_tap not in network.taps | network.spares
    assert "vm-b" in {n.vm_id for n in network.applied}
    assert set(await node.local_vms()) == {"vm-src", "vm-a", "vm-b"}

    [refill] = await _ready_spares(node)  # the claim is replaced
    assert refill != spare
    # a create of another shape finds no spare of its kind: it restores, and the spare stays
    await node.create(_spec(tmp_path, "vm-c", "10.78.0.5", "snap-1", mem_mb=512))
    assert refill in node.spares.ready()
    # spares go with their snapshot
    await node.delete_snapshot("snap-1")
    assert node.spares.ready() == [] and network.spares == set()
    assert not [p for p in (tmp_path / "vms").iterdir() if p.name.startswith(SPARE_PREFIX) and not p.is_symlink()]


async def test_a_template_just_built_gets_its_spare_before_its_first_create(node: NodeAgent, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        await node.keep_spares(_spec(tmp_path, "tpl-x", "10.78.0.9", "snap-none"))
    await node.create(_spec(tmp_path, "tpl-1", "10.78.0.2"))
    await node.snapshot("tpl-1", "snap-1")
    await node.destroy("tpl-1")  # the template's own VM goes; creates like it are to come
    await node.keep_spares(_spec(tmp_path, "tpl-1", "10.78.0.2", "snap-1"))
    [spare] = await _ready_spares(node)
    await node.create(_spec(tmp_path, "vm-a", "10.78.0.3", "snap-1"))  # the very first create claims it
    assert spare not in node.spares.ready() and not node.driver.is_running(spare)
    assert await node.local_vms() == ["vm-a"]


async def test_a_spare_that_died_is_passed_over(node: NodeAgent, tmp_path: Path) -> None:
    await node.create(_spec(tmp_path, "vm-src", "10.78.0.2"))
    await node.snapshot("vm-src", "snap-1")
    await node.create(_spec(tmp_path, "vm-a", "10.78.0.3", "snap-1"))
    [spare] = await _ready_spares(node)
    await node.driver.kill(spare)
    await node.create(_spec(tmp_path, "vm-b", "10.78.0.4", "snap-1"))  # restores instead
    assert node.driver.is_running("vm-b") and not (tmp_path / "vms" / spare).exists()
    assert await _sh(node, "vm-b", "echo ok") == "ok\n"


async def test_spares_end_with_the_node_and_strays_at_the_next_start(tmp_path: Path) -> None:
    network = FakeNetwork(CFG)
    first = NodeAgent(tmp_path / "vms", FakeDriver(), network=network, snapshots_dir=tmp_path / "snaps", warm_spares=1)
    await first.create(_spec(tmp_path, "vm-src", "10.78.0.2"))
    await first.snapshot("vm-src", "snap-1")
    await first.create(_spec(tmp_path, "vm-a", "10.78.0.3", "snap-1"))
    [spare] = await _ready_spares(first)
    # the node process ends without closing (killed): its spare runs on, the next node process destroys it
    second = NodeAgent(tmp_path / "vms", FakeDriver(), network=network, snapshots_dir=tmp_path / "snaps", warm_spares=1)
    assert await second.reattach(await second.local_vms()) == {"vm-src", "vm-a"}
    assert not (tmp_path / "vms" / spare).exists() and network.spares == set()
    await second.create(_spec(tmp_path, "vm-b", "10.78.0.4", "snap-1"))
    [made] = await _ready_spares(second)
    await second.close()
    assert not (tmp_path / "vms" / made).exists() and second.spares.ready() == []
    for vm_id in ("vm-src", "vm-a", "vm-b"):
        await second.destroy(vm_id)


async def test_off_by_default(tmp_path: Path) -> None:
    node = NodeAgent(tmp_path / "vms", FakeDriver(), snapshots_dir=tmp_path / "snaps")
    await node.create(_spec(tmp_path, "vm-src", "10.78.0.2"))
    await node.snapshot("vm-src", "snap-1")
    await node.create(_spec(tmp_path, "vm-a", "10.78.0.3", "snap-1"))
    await asyncio.sleep(0.3)
    assert node.spares.ready() == [] and sorted(p.name for p in (tmp_path / "vms").iterdir()) == ["vm-a", "vm-src"]
    for vm_id in ("vm-src", "vm-a"):
        await node.destroy(vm_id)


async def test_fake_driver_rename(tmp_path: Path) -> None:
    drv = FakeDriver()
    wd = tmp_path / "vm-x"
    wd.mkdir()
    (wd / "disk.qcow2").write_text("{}")
    await drv.start(MachineSpec("vm-x", 1, 128, tmp_path / "k", tmp_path / "i", wd / "disk.qcow2", wd))
    await check_rename(drv, "vm-x", wd, FakeDriver)
    assert not wd.exists() and not wd.is_symlink(), "kill removes the link the fake left"
