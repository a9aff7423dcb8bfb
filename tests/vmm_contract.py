"""What every ``VmmDriver`` must do, checked the same way on the fake and on QEMU (see the tests that call it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sheesh.vmm.driver import VmmDriver, VmmError


async def check_rename(drv: VmmDriver, vm_id: str, old: Path, fresh: Callable[[], VmmDriver]) -> None:
    """``vm_id`` runs under ``drv`` in the folder ``old``, beside which ``renamed`` may be made. After ``rename`` the VM
    runs under its new id only, its folder (with its files) is at the new place, pause and resume reach it, and
    a new driver (a restarted node) adopts it there under the new id; ``kill`` ends it."""
    new = old.parent / "renamed"
    files = sorted(p.name for p in old.iterdir())
    await drv.rename(vm_id, "renamed", new)
    assert drv.is_running("renamed") and not drv.is_running(vm_id)
    assert not old.is_dir() or old.is_symlink(), "the folder moved"
    assert set(files) <= {p.name for p in new.iterdir()}
    await drv.pause("renamed")
    await drv.resume("renamed")
    with pytest.raises(VmmError):
        await drv.rename(vm_id, "again", old.parent / "again")
    with pytest.raises(VmmError):
        await drv.rename("renamed", "again", new)  # the destination exists
    again = fresh()
    assert await again.attach("renamed", new) is True
    assert again.usage("renamed") is not None
    await drv.kill("renamed")
    assert not drv.is_running("renamed")
