"""Upload/download in the guest agent's transfer module, on a host folder standing for /workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sheesh.guest.files import TransferError, Transfers
from tests.archives import bomb, members, targz


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "existing.txt").write_text("keep")
    return root


def upload(t: Transfers, dest: str, data: bytes, max_bytes: int = 1 << 30, chunk: int = 1000) -> dict[str, int]:
    key = t.begin_upload(dest, max_bytes)
    for i in range(0, len(data), chunk):
        t.feed(key, data[i : i + chunk])
    return t.end_upload(key)


def drain(t: Transfers, key: str, first: bytes = b"") -> bytes:
    """The rest of a download, after ``first``."""
    data = first
    while True:
        chunk, eof = t.next_chunk(key)
        data += chunk
        if eof:
            return data


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_upload_then_download_roundtrip(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None)
    data = targz([("dir", "src", b""), ("file", "src/a.txt", "alpha"), ("file", "./b.txt", "beta")])
    assert upload(t, "/workspace/project/new", data) == {"files": 2, "bytes": 9}
    assert (ws / "project/new/src/a.txt").read_text() == "alpha"
    assert (ws / "project/new/b.txt").read_text() == "beta"
    got = members(drain(t, t.begin_download("/workspace/project")))
    assert got["new/src/a.txt"] == b"alpha" and got["new/b.txt"] == b"beta"
    assert not [p for p in ws.iterdir() if p.name.startswith(".sheesh-upload")]


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([("file", "ok.txt", "x"), ("symlink", "link", "/etc/passwd")], "links are not allowed"),
        ([("file", "ok.txt", "x"), ("hardlink", "hard", "ok.txt")], "links are not allowed"),
        ([("file", "/etc/evil", "x")], "absolute path"),
        ([("file", "ok.txt", "x"), ("file", "../escape.txt", "x")], "path traversal"),
        ([("file", "a/../../escape.txt", "x")], "path traversal"),
        ([("fifo", "pipe", b"")], "only regular files"),
    ],
)
def test_hostile_archives_write_nothing(ws: Path, entries: list[tuple[str, str, bytes | str]], fragment: str) -> None:
    t = Transfers(str(ws), "/workspace", None)
    before = snapshot(ws)
    with pytest.raises(TransferError, match=fragment) as err:
        upload(t, "/workspace/dest", targz(entries))
    assert err.value.kind == "invalid"
    assert snapshot(ws) == before
    assert not (ws.parent / "escape.txt").exists()


def test_not_gzip_is_invalid(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None)
    with pytest.raises(TransferError, match=r"not a valid tar\.gz"):
        upload(t, "/workspace", b"this is not an archive" * 100)


def test_bomb_is_stopped_at_the_budget(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None)
    data = bomb(64 * 1024 * 1024)
    assert len(data) < 200_000
    before = snapshot(ws)
    with pytest.raises(TransferError, match="expands beyond") as err:
        upload(t, "/workspace", data, max_bytes=4 * 1024 * 1024, chunk=65536)
    assert err.value.kind == "too_large"
    assert snapshot(ws) == before


def test_budget_respects_free_disk(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None, free_bytes=lambda _: 64 * 1024 * 1024 + 1000)
    with pytest.raises(TransferError, match="expands beyond 1000 bytes"):
        upload(t, "/workspace", targz([("file", "big", b"x" * 5000)]))


@pytest.mark.parametrize("dest", ["/etc", "/workspace/../etc", "relative/path", "/workspacefoo"])
def test_destinations_outside_workspace(ws: Path, dest: str) -> None:
    t = Transfers(str(ws), "/workspace", None)
    with pytest.raises(TransferError, match="path must be"):
        t.begin_upload(dest, 1000)


def test_symlinked_destination_cannot_escape(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ws / "sneaky")
    t = Transfers(str(ws), "/workspace", None)
    with pytest.raises(TransferError, match="symlink"):
        t.begin_upload("/workspace/sneaky", 1000)
    with pytest.raises(TransferError, match="symlink"):
        t.begin_download("/workspace/sneaky")
    # an archive entry landing on an existing symlink inside the destination is refused too
    os.symlink(outside, ws / "dir-link")
    with pytest.raises(TransferError, match="is a symlink"):
        upload(t, "/workspace", targz([("file", "dir-link/x", "x")]))
    assert list(outside.iterdir()) == []


def test_file_over_folder_conflict_writes_nothing(ws: Path) -> None:
    (ws / "d").mkdir()
    t = Transfers(str(ws), "/workspace", None)
    with pytest.raises(TransferError, match="not a file"):
        upload(t, "/workspace", targz([("file", "new.txt", "n"), ("file", "d", "x")]))
    assert not (ws / "new.txt").exists()


def test_download_of_missing_path(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None)
    with pytest.raises(TransferError) as err:
        t.begin_download("/workspace/nope")
    assert err.value.kind == "not_found"


def test_download_keeps_symlinks_as_links(ws: Path) -> None:
    (ws / "p").mkdir()
    os.symlink("/etc/passwd", ws / "p" / "pw")
    t = Transfers(str(ws), "/workspace", None)
    assert members(drain(t, t.begin_download("/workspace/p"))) == {"pw": None}


def test_upload_staging_is_outside_the_workspace(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None)
    key = t.begin_upload("/workspace/d", 1 << 20)
    assert not [p for p in ws.iterdir() if p.name.startswith(".sheesh")]
    staging = Path(t.staging)
    assert not staging.is_relative_to(ws)
    assert staging.stat().st_mode & 0o077 == 0
    t.abort_upload(key)


def test_destination_swapped_for_a_link_mid_upload_writes_nothing_outside(ws: Path, tmp_path: Path) -> None:
    """The user replaces the destination folder by a symlink after the upload began (the body paused)."""
    outside = tmp_path / "root-home"
    outside.mkdir()
    (ws / "dest").mkdir()
    t = Transfers(str(ws), "/workspace", None)
    data = targz([("file", "a.txt", "alpha"), ("file", "sub/b.txt", "beta")])
    key = t.begin_upload("/workspace/dest", 1 << 20)
    t.feed(key, data[:20])
    os.rename(ws / "dest", ws / "dest.old")
    os.symlink(outside, ws / "dest")
    t.feed(key, data[20:])
    with pytest.raises(TransferError):
        t.end_upload(key)
    assert list(outside.iterdir()) == []
    assert list((ws / "dest.old").iterdir()) == []


def test_subfolder_swapped_for_a_link_mid_download_is_not_followed(ws: Path, tmp_path: Path) -> None:
    """A slow download: after the first chunk (the producer blocks on the full pipe inside the first, large
    file) a subfolder already listed is replaced by a symlink to a folder with secrets."""
    secrets_dir = tmp_path / "etc"
    secrets_dir.mkdir()
    (secrets_dir / "shadow").write_text("root:secret-hash")
    (ws / "p" / "sub").mkdir(parents=True)
    (ws / "p" / "a-big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    (ws / "p" / "sub" / "mine.txt").write_text("mine")
    t = Transfers(str(ws), "/workspace", None)
    key = t.begin_download("/workspace/p")
    first = t.next_chunk(key)[0]
    os.rename(ws / "p" / "sub", ws / "p" / "sub.old")
    os.symlink(secrets_dir, ws / "p" / "sub")
    archive = drain(t, key, first)
    got = members(archive)
    assert b"secret-hash" not in archive
    assert not any(name.startswith("sub/") for name in got)
    assert len(got["a-big.bin"]) == 4 * 1024 * 1024


def test_download_of_one_file(ws: Path) -> None:
    t = Transfers(str(ws), "/workspace", None)
    assert members(drain(t, t.begin_download("/workspace/existing.txt"))) == {"existing.txt": b"keep"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_folders_made_for_an_upload_belong_to_the_user_and_existing_ones_keep_their_owner(ws: Path) -> None:
    (ws / "rootowned").mkdir()
    t = Transfers(str(ws), "/workspace", (1000, 1000))
    data = targz([("file", "sub/x.txt", "x"), ("file", "y.txt", "y")])
    assert upload(t, "/workspace/rootowned/a/b", data) == {"files": 2, "bytes": 2}
    owners = {p: (ws / p).stat().st_uid for p in ("rootowned", "rootowned/a", "rootowned/a/b", "rootowned/a/b/sub")}
    assert owners == {"rootowned": 0, "rootowned/a": 1000, "rootowned/a/b": 1000, "rootowned/a/b/sub": 1000}
    assert (ws / "rootowned/a/b/sub/x.txt").stat().st_uid == 1000
