"""Stopping the PIT the guest kernel does not use (``guest/timers.py``): on a sysfs tree and a port file made
here (``/dev/port`` writes a byte at offset N to I/O port N; a plain file records them at those offsets)."""

from pathlib import Path

import pytest

from sheesh.guest.timers import pit_in_use, quiet_pit


def _clockevents(root: Path, tick: str | None, broadcast: str | None) -> str:
    for name, device in (("clockevent0", tick), ("broadcast", broadcast)):
        if device is not None:
            (root / name).mkdir(parents=True)
            (root / name / "current_device").write_text(device + "\n")
    return str(root)


def _port(tmp_path: Path) -> Path:
    port = tmp_path / "port"
    port.write_bytes(b"\xff" * 0x50)
    return port


def test_the_pit_is_programmed_one_shot_when_the_kernel_ticks_with_the_apic(tmp_path: Path) -> None:
    port = _port(tmp_path)
    assert quiet_pit(_clockevents(tmp_path / "ce", "lapic", "None"), str(port))
    data = port.read_bytes()
    assert data[0x43] == 0x30  # channel 0, low/high byte, mode 0
    assert data[0x40] == 0x00  # count 0 (low then high byte, both at the data port)
    assert data[0x41] == 0xFF and data[0x42] == 0xFF  # the other channels untouched


@pytest.mark.parametrize(
    ("tick", "broadcast"),
    [("pit", "None"), ("lapic", "pit"), (None, None)],
    ids=["pit ticks", "pit broadcasts", "no clockevents"],
)
def test_a_pit_the_kernel_may_use_is_left_alone(tmp_path: Path, tick: str | None, broadcast: str | None) -> None:
    port = _port(tmp_path)
    clockevents = _clockevents(tmp_path / "ce", tick, broadcast)
    assert pit_in_use(clockevents)
    assert not quiet_pit(clockevents, str(port))
    assert port.read_bytes() == b"\xff" * 0x50


def test_no_port_device_is_no_error(tmp_path: Path) -> None:
    assert not quiet_pit(_clockevents(tmp_path / "ce", "lapic", "None"), str(tmp_path / "missing"))
