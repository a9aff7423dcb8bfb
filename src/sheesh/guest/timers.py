"""Stopping the legacy PIT the guest kernel does not use (standard library only).

A microVM starts with QEMU's i8254 PIT counting in square-wave mode, as a PC's firmware would leave it, and
no firmware runs to program it. Linux keeps time with the TSC and the local APIC timer here, so it never stops
the PIT. QEMU then wakes its main loop at every edge of that output, ~36 times a second, whether or not the
interrupt is delivered. That was most of an idle VM's host CPU.

``quiet_pit`` programs channel 0 as Linux's own PIT shutdown does: mode 0 (one interrupt at terminal count),
count 0. It acts only when neither the kernel's tick device nor its broadcast device is the PIT. Snapshots
taken afterwards keep the PIT stopped, so VMs restored from templates inherit it.
"""

from __future__ import annotations

import os

CLOCKEVENTS = "/sys/devices/system/clockevents"
PORT = "/dev/port"
_PIT_MODE = 0x43
_PIT_CH0 = 0x40
_CH0_ONESHOT = b"\x30"
"""Channel 0, low then high byte, mode 0 (interrupt on terminal count), binary."""


def _device(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def pit_in_use(clockevents: str = CLOCKEVENTS) -> bool:
    """Whether the kernel ticks with the PIT or keeps it for broadcast (or whether it cannot tell)."""
    tick = _device(os.path.join(clockevents, "clockevent0", "current_device"))
    broadcast = _device(os.path.join(clockevents, "broadcast", "current_device"))
    return tick in (None, "pit") or broadcast == "pit"


def quiet_pit(clockevents: str = CLOCKEVENTS, port: str = PORT) -> bool:
    """Stop the PIT's square wave if the kernel does not use the PIT; whether it did."""
    if pit_in_use(clockevents):
        return False
    try:
        fd = os.open(port, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.pwrite(fd, _CH0_ONESHOT, _PIT_MODE)
        os.pwrite(fd, b"\x00", _PIT_CH0)
        os.pwrite(fd, b"\x00", _PIT_CH0)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
