"""ExecHistory: execution history written on its own thread, behind the calls it records."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sheesh.control.history import ExecHistory
from sheesh.models import ExecKind, ExecLog
from sheesh.store.errors import StoreError
from sheesh.store.memory import MemoryStore
from sheesh.store.repo import SqlStore
from tests.unit.test_store import _vm

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(i: int, vm_id: str = "vm-1") -> ExecLog:
    return ExecLog(
        id=f"xl-{i}",
        vm_id=vm_id,
        kind=ExecKind.EXEC,
        command=f"cmd {i}",
        started_at=BASE + timedelta(seconds=i),
        duration_ms=1.0,
        exit_code=0,
    )


class GatedStore(MemoryStore):
    """A store whose exec-log writes wait for ``gate``, and fail while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.failing = False
        self.writers: set[str] = set()

    def add_exec_log(self, entry: ExecLog, keep: int) -> None:
        self.writers.add(threading.current_thread().name)
        assert self.gate.wait(10)
        if self.failing:
            self.failing = False
            raise StoreError("database is locked")
        super().add_exec_log(entry, keep)


@pytest.fixture
def sql(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path / 'sheesh.db'}")
    store.add_vm(_vm("vm-1", "172.16.0.2"))
    yield store
    store.close()


def test_entries_are_written_in_order_behind_add_and_read_back_at_once(sql: SqlStore) -> None:
    history = ExecHistory(sql, keep=5)
    for i in range(8):
        history.add(_entry(i))
    assert [e.id for e in history.list("vm-1", None, 100)] == ["xl-7", "xl-6", "xl-5", "xl-4", "xl-3"]
    history.close()
    history.add(_entry(9))  # after close: written at once, by the caller
    assert sql.list_exec_logs("vm-1", None, 1)[0].id == "xl-9"


def test_add_does_not_wait_for_the_database_and_flush_does() -> None:
    store = GatedStore()
    store.add_vm(_vm("vm-1", "172.16.0.2"))
    history = ExecHistory(store)
    history.add(_entry(1))  # returns while the write waits at the gate
    assert store.list_exec_logs("vm-1", None, 10) == []
    flushed = threading.Event()
    reader = threading.Thread(target=lambda: (history.flush(), flushed.set()))
    reader.start()
    assert not flushed.wait(0.2)  # the entry is not in the store yet
    store.gate.set()
    assert flushed.wait(10)
    reader.join()
    assert [e.id for e in store.list_exec_logs("vm-1", None, 10)] == ["xl-1"]
    assert store.writers == {"exec-history"}
    history.close()


def test_a_failed_write_is_dropped_and_the_writer_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    store = GatedStore()
    store.add_vm(_vm("vm-1", "172.16.0.2"))
    store.gate.set()
    store.failing = True
    history = ExecHistory(store)
    history.add(_entry(1))
    history.add(_entry(2))
    assert [e.id for e in history.list("vm-1", None, 10)] == ["xl-2"]
    assert "entry of VM vm-1 not written: database is locked" in caplog.text
    history.close()


def test_entries_of_a_vm_deleted_before_they_are_written_are_dropped(sql: SqlStore) -> None:
    history = ExecHistory(sql)
    history.add(_entry(1))
    history.flush()
    sql.delete_vm("vm-1")
    history.add(_entry(2))
    history.add(_entry(3, vm_id="vm-gone"))
    history.close()
    assert sql.list_exec_logs("vm-1", None, 10) == []
    assert sql.list_exec_logs("vm-gone", None, 10) == []
