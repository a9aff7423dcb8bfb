"""The guest's job cgroups on a folder laid out like cgroupfs (the kernel's side is tested on real VMs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sheesh.guest.cgroups import EXEC, ExecCgroups, JobCgroup, exec_memory_max


def _cgroup(tmp_path: Path, populated: bool) -> JobCgroup:
    (tmp_path / "cgroup.events").write_text(f"populated {int(populated)}\nfrozen 0\n")
    return JobCgroup(str(tmp_path))


def test_kill_and_wait_returns_once_the_processes_are_gone(tmp_path: Path) -> None:
    cgroup = _cgroup(tmp_path, populated=True)

    def die_later() -> None:
        time.sleep(0.7)
        (tmp_path / "cgroup.events").write_text("populated 0\nfrozen 0\n")

    threading.Thread(target=die_later).start()
    start = time.monotonic()
    assert cgroup.kill_and_wait(timeout_s=5) is True
    assert 0.6 < time.monotonic() - start < 3
    assert (tmp_path / "cgroup.kill").read_text() == "1"  # sent (again every half second while they linger)


def test_kill_and_wait_is_bounded(tmp_path: Path) -> None:
    cgroup = _cgroup(tmp_path, populated=True)
    start = time.monotonic()
    assert cgroup.kill_and_wait(timeout_s=0.3) is False
    assert time.monotonic() - start < 1.5


def test_an_empty_or_removed_cgroup_is_not_populated(tmp_path: Path) -> None:
    assert _cgroup(tmp_path, populated=False).populated() is False
    assert JobCgroup(str(tmp_path / "gone")).populated() is False
    assert JobCgroup(str(tmp_path / "gone")).kill_and_wait(timeout_s=0.1) is True


def test_exec_memory_keeps_a_reserve() -> None:
    mib = 1024 * 1024
    assert exec_memory_max(256 * mib) == 256 * mib - 40 * mib
    assert exec_memory_max(1024 * mib) == 1024 * mib - 128 * mib


def test_a_released_cgroup_is_removed_after_the_answer_once_empty(tmp_path: Path) -> None:
    """``release`` (on the job's answer path) only queues the cgroup: the next ``new`` (the shell pool's refill,
    after the answer) removes it, or keeps it while processes of the job remain (here: a non-empty folder)."""
    cgroups = ExecCgroups(str(tmp_path))
    (tmp_path / EXEC).mkdir()
    done, busy = tmp_path / EXEC / "done", tmp_path / EXEC / "busy"
    done.mkdir()
    busy.mkdir()
    (busy / "cgroup.procs").write_text("123\n")
    cgroups.release(JobCgroup(str(done)))
    cgroups.release(JobCgroup(str(busy)))
    assert done.exists() and busy.exists()
    cgroups.sweep()
    assert not done.exists() and busy.exists()
    (busy / "cgroup.procs").unlink()
    fresh = cgroups.new()
    assert not busy.exists() and Path(fresh.path).parent == tmp_path / EXEC
