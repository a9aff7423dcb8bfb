"""The guest's job cgroups on a folder laid out like cgroupfs (the kernel's side is tested on real VMs)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sheesh.guest.cgroups import EXEC, IDLE_KEEP, JOB_PIDS_MAX, ExecCgroups, JobCgroup, exec_memory_max


def _cgroup(path: Path, populated: bool) -> JobCgroup:
    path.mkdir(exist_ok=True)
    (path / "cgroup.events").write_text(f"populated {int(populated)}\nfrozen 0\n")
    return JobCgroup(str(path))


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


def test_a_released_cgroup_is_reused_once_empty_and_kept_while_its_processes_run(tmp_path: Path) -> None:
    """``release`` (on the job's answer path) only queues the cgroup: the next ``new`` (the shell pool's refill,
    after the answer) reuses it once no process of the job is left in it, and keeps a busy one for later."""
    cgroups = ExecCgroups(str(tmp_path))
    (tmp_path / EXEC).mkdir()
    done, busy = _cgroup(tmp_path / EXEC / "done", populated=False), _cgroup(tmp_path / EXEC / "busy", populated=True)
    cgroups.release(done)
    cgroups.release(busy)
    assert cgroups.new().path == done.path
    fresh = cgroups.new()
    assert fresh.path not in (done.path, busy.path) and Path(fresh.path).parent == tmp_path / EXEC
    assert (Path(fresh.path) / "pids.max").read_text() == str(JOB_PIDS_MAX)
    (Path(busy.path) / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert cgroups.new().path == busy.path


def test_emptied_cgroups_beyond_the_idle_few_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rmdir = os.rmdir

    def remove_cgroup(path: str) -> None:  # cgroupfs removes a cgroup's control files with it
        for control in Path(path).iterdir():
            control.unlink()
        rmdir(path)

    monkeypatch.setattr(os, "rmdir", remove_cgroup)
    cgroups = ExecCgroups(str(tmp_path))
    (tmp_path / EXEC).mkdir()
    released = [_cgroup(tmp_path / EXEC / f"job{i}", populated=False) for i in range(IDLE_KEEP + 3)]
    for cgroup in released:
        cgroups.release(cgroup)
    cgroups.sweep()
    left = sorted(p.name for p in (tmp_path / EXEC).iterdir())
    assert left == [f"job{i}" for i in range(IDLE_KEEP)]
    reused = {cgroups.new().path for _ in range(IDLE_KEEP)}
    assert reused == {c.path for c in released[:IDLE_KEEP]}
    assert cgroups.new().path not in reused
