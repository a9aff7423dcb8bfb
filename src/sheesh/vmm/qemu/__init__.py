"""QEMU backend: the only place that knows QEMU command lines, qemu-img and QMP."""

from sheesh.vmm.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
