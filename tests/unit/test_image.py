"""Image builder pieces that need no root: vmlinux extraction, module order, cpio, recipe hashing."""

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from sheesh.image.builder import Recipe, default_recipe
from sheesh.image.cpio import CpioWriter
from sheesh.image.errors import ImageBuildError
from sheesh.image.kernel import extract_vmlinux, module_load_order


def test_extract_vmlinux_finds_the_xz_payload() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 40
    bzimage = b"MZ" + b"\x00" * 500 + b"\xfd7zXZ\x00 decoy" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\x00" * 64
    assert extract_vmlinux(bzimage) == elf


def test_extract_vmlinux_without_payload_fails() -> None:
    with pytest.raises(ImageBuildError):
        extract_vmlinux(b"MZ" + b"\x00" * 1000)


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    dep = tmp_path / "modules.dep"
    dep.write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n"
    )
    order = module_load_order(dep, ["virtio_blk", "ext4"])
    names = [Path(p).name for p in order]
    assert names.index("virtio.ko") < names.index("virtio_blk.ko")
    assert names.index("jbd2.ko") < names.index("ext4.ko")
    assert len(names) == len(set(names)) == 7
    with pytest.raises(ImageBuildError):
        module_load_order(dep, ["nonexistent"])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_cpio_archive_is_readable_by_cpio(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    with open(archive, "wb") as fh:
        w = CpioWriter(fh)
        w.directory("bin")
        w.file("init", b"#!/bin/sh\necho hi\n", 0o755)
        w.symlink("bin/sh", "busybox")
        w.char_device("console", 5, 1)
        w.close()
    listing = subprocess.run(["cpio", "-itv"], input=archive.read_bytes(), capture_output=True, check=True)
    text = listing.stdout.decode()
    assert "init" in text and "bin/sh -> busybox" in text
    assert text.splitlines()[3].startswith("crw")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--no-absolute-filenames", "init"],
        input=archive.read_bytes(),
        cwd=out,
        capture_output=True,
        check=True,
    )
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"


def test_recipe_hash_changes_with_agent_code_and_packages() -> None:
    base = default_recipe()
    assert base.hash() == default_recipe().hash()
    assert Recipe(files_digest="other").hash() != base.hash()
    assert Recipe(packages=("python3",), files_digest=base.files_digest).base_hash() != base.base_hash()
