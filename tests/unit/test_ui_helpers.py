"""The UI's helpers: plain uploads packed into a tar.gz, the listing read from a tar.gz stream, usage readings."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import pytest
from starlette.datastructures import UploadFile

from sheesh.api.ui.history import UsageHistory
from sheesh.api.ui.packing import list_archive, pack_files
from sheesh.errors import InvalidInputError
from sheesh.node.contract import VmUsage


def _upload(name: str, data: bytes) -> UploadFile:
    return UploadFile(io.BytesIO(data), filename=name)


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_packed_files_list_back_with_their_sizes() -> None:
    with pack_files([_upload("a.txt", b"hello"), _upload("dir\\b.bin", b"x" * 70_000)]) as archive:
        data = archive.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert {m.name: (m.size, m.mode) for m in tar} == {"a.txt": (5, 0o644), "b.bin": (70_000, 0o644)}
    entries, truncated = await list_archive(_chunks(data), 10)
    assert [(e.path, e.size, e.dir) for e in entries] == [("a.txt", 5, False), ("b.bin", 70_000, False)]
    assert not truncated
    entries, truncated = await list_archive(_chunks(data), 1)
    assert [e.path for e in entries] == ["a.txt"] and truncated


async def test_bad_names_and_bad_archives_are_refused() -> None:
    for names in (["a", "a"], [".."], [""]):
        with pytest.raises(InvalidInputError), pack_files([_upload(n, b"1") for n in names]):
            pass
    with pytest.raises(InvalidInputError, match="could not be read"):
        await list_archive(_chunks(b"not a gzip stream" * 100), 10)


def test_usage_sparklines_and_stale_readings() -> None:
    readings = UsageHistory()
    assert readings.add("vm-1", VmUsage(cpu_s=1.0, mem_mb=100, at_s=1000.0)) is not None
    chart = readings.add("vm-1", VmUsage(cpu_s=1.5, mem_mb=120, at_s=1001.0))
    assert chart is not None and chart.cpu_pct.now == 50.0 and chart.mem_mb.now == 120
    restarted = readings.add("vm-1", VmUsage(cpu_s=0.1, mem_mb=90, at_s=1002.0))
    assert restarted is not None and restarted.cpu_pct.now == 0.0, "a new process starts its counters again"
    readings.add("vm-2", VmUsage(cpu_s=0, mem_mb=1, at_s=1500.0))
    readings.forget_stale(now_s=1400.0)
    assert set(readings.readings) == {"vm-2"}
    assert readings.add("vm-2", None) is None and readings.readings == {}
