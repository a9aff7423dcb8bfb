"""QMP sessions with a real QEMU: its QMP socket serves one client at a time, and a second client connecting
meanwhile fails its handshake (EINVAL). Concurrent driver calls on one VM (VNC logins, pause, resume) must
all succeed, by taking turns."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sheesh.vmm.process import ManagedProcess
from sheesh.vmm.qemu import QemuDriver
from sheesh.vmm.qemu.cmdline import PIDFILE, QMP_SOCKET
from tests.vmm_contract import check_rename

pytestmark = pytest.mark.vm


@contextlib.asynccontextmanager
async def bare_qemu(wd: Path, *extra: str) -> AsyncIterator[QemuDriver]:
    """A QEMU with no machine (``-S``), QMP and a pid file in ``wd``, adopted by a driver; it must have ended when
    the block does (the driver's kill ends it a moment after returning: QEMU is not the driver's child)."""
    binary = shutil.which("qemu-system-x86_64")
    assert binary is not None
    wd.mkdir()
    qmp = str(wd / QMP_SOCKET)
    argv = [binary, "-machine", "none", "-nodefaults", "-display", "none", "-S", *extra]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off", "-pidfile", str(wd / PIDFILE)]
    proc = ManagedProcess.spawn(argv, qmp, wd.parent / f"{wd.name}.out.log", wd.parent / f"{wd.name}.err.log")
    try:
        for _ in range(200):
            if (wd / PIDFILE).exists() and (wd / QMP_SOCKET).exists():
                break
            await asyncio.sleep(0.05)
        drv = QemuDriver(wd.parent)
        assert await drv.attach(wd.name, wd) is True
        yield drv
        for _ in range(100):
            if not proc.alive():
                break
            await asyncio.sleep(0.05)
        assert not proc.alive()
    finally:
        await proc.terminate(grace=0.5)


async def test_concurrent_qmp_commands_on_one_vm_all_succeed(tmp_path: Path) -> None:
    wd = tmp_path / "vm-q"
    async with bare_qemu(wd, "-vnc", f"unix:{wd / 'vnc.sock'},password=on") as drv:
        calls = []
        for i in range(10):
            calls += [drv.set_vnc_password("vm-q", f"pass{i:04d}"), drv.resume("vm-q"), drv.pause("vm-q")]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        await drv.kill("vm-q")


async def test_a_renamed_vm_keeps_running_under_its_new_id(tmp_path: Path) -> None:
    """The driver seam's ``rename`` on QEMU (the same check as on the fake, ``tests/vmm_contract.py``): QEMU's
    sockets and pid file move with the folder; a new driver adopts it by the command line it started with."""
    async with bare_qemu(tmp_path / "vm-r") as drv:
        await check_rename(drv, "vm-r", tmp_path / "vm-r", lambda: QemuDriver(tmp_path))
