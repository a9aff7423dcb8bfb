"""Host tier: hypervisor drivers. Only ``vmm.qemu`` knows QEMU command lines, disk formats and QMP."""
