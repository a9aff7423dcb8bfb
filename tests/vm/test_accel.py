"""The KVM probe behind SHEESH_ACCEL=auto: validated by running the same check under TCG."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sheesh.image.builder import BuiltImage
from sheesh.vmm.driver import MachineSpec
from sheesh.vmm.qemu import QemuDriver

pytestmark = pytest.mark.vm


async def test_boot_probe_detects_a_working_accelerator(guest_image: BuiltImage, tmp_path: Path) -> None:
    drv = QemuDriver(tmp_path)
    assert await drv.boots(guest_image.kernel, "tcg", timeout=60) is True  # TCG is far slower than the KVM bound
    assert await drv.boots(tmp_path / "missing-kernel", "tcg") is False


async def test_auto_accel_result_is_cached(guest_image: BuiltImage, tmp_path: Path) -> None:
    drv = QemuDriver(tmp_path, accel="auto")
    spec = MachineSpec("p", 1, 128, guest_image.kernel, guest_image.initrd, tmp_path / "d.qcow2", tmp_path)
    first = await drv._kvm_works(spec)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert first is False
    else:
        assert (tmp_path / "kvm-probe.json").exists()
        assert await drv._kvm_works(spec) is first
