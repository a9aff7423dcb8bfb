"""The UI's file packing: plain uploads packed into a tar.gz, and the listing read from a tar.gz stream."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import pytest
from starlette.datastructures import UploadFile

from sheesh.api.ui.packing import list_archive, pack_files
from sheesh.errors import InvalidInputError


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
