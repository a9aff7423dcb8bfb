"""Image validation and the /v1/images lifecycle on fakes."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sheesh.config import Settings
from sheesh.image.errors import InvalidImageError
from sheesh.image.validate import check_kernel, check_rootfs
from tests.fakes import ADMIN as KEY
from tests.fakes import FakeStack

OCTET = {**KEY, "content-type": "application/octet-stream"}


def elf(machine: int = 62, pvh: bool = True) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment (a Xen PHYS32_ENTRY note when ``pvh``)."""
    note = struct.pack("<III", 4, 4, 18 if pvh else 1) + b"Xen\0" + struct.pack("<I", 0x1000000)
    phoff, note_off = 64, 64 + 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, phoff, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return header + phdr + note


@pytest.fixture
def ext4(tmp_path: Path) -> Path:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 missing")
    path = tmp_path / "rootfs.ext4"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


def test_kernel_checks(tmp_path: Path) -> None:
    good = tmp_path / "vmlinux"
    good.write_bytes(elf())
    check_kernel(good)
    for data, fragment in [(b"MZ" + bytes(100), "not an ELF"), (elf(machine=183), "x86-64"), (elf(pvh=False), "PVH")]:
        bad = tmp_path / "bad"
        bad.write_bytes(data)
        with pytest.raises(InvalidImageError, match=fragment):
            check_kernel(bad)


def test_rootfs_checks(tmp_path: Path, ext4: Path) -> None:
    assert check_rootfs(ext4) == 64
    junk = tmp_path / "junk"
    with open(junk, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    with pytest.raises(InvalidImageError, match="not an ext4"):
        check_rootfs(junk)
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    with pytest.raises(InvalidImageError, match="at least"):
        check_rootfs(small)


@pytest.fixture
def client(stack: FakeStack) -> TestClient:
    return stack.client


def test_image_lifecycle(client: TestClient, ext4: Path, settings: Settings) -> None:
    c = client
    r = c.post("/v1/images", json={"name": "my-custom-image", "description": "Alpine with Python 3.12"}, headers=KEY)
    assert r.status_code == 201
    img = r.json()
    assert img["ready"] is False and img["isDefault"] is False and img["rootfsSizeMb"] == 0
    assert img["id"] in [i["id"] for i in c.get("/v1/images", headers=KEY).json()]
    r = c.post(f"/v1/images/{img['id']}/set-default", headers=KEY)
    assert r.status_code == 409 and "kernel and a rootfs" in r.json()["message"]
    assert (
        c.post("/v1/vms", json={"cpu": 1, "memMb": 128, "allowIps": [], "imageId": img["id"]}, headers=KEY).status_code
        == 409
    )

    r = c.put(f"/v1/images/{img['id']}/kernel", content=b"not a kernel", headers=OCTET)
    assert r.status_code == 400 and "ELF" in r.json()["message"]
    assert c.put(f"/v1/images/{img['id']}/kernel", content=elf(), headers=OCTET).status_code == 200
    r = c.put(f"/v1/images/{img['id']}/rootfs", content=bytes(70 * 1024 * 1024), headers=OCTET)
    assert r.status_code == 400 and "ext4" in r.json()["message"]
    r = c.put(f"/v1/images/{img['id']}/rootfs", content=ext4.read_bytes(), headers=OCTET)
    assert r.status_code == 200 and r.json()["rootfsSizeMb"] == 64
    image_dir = settings.resolved_image_dir() / "custom" / img["id"]
    assert not list(image_dir.glob("*.upload")), "temporary upload left behind"
    (image_dir / "initrd.cpio").write_bytes(b"initrd")
    assert c.get(f"/v1/images/{img['id']}", headers=KEY).json()["ready"] is True

    vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 128, "allowIps": [], "imageId": img["id"]}, headers=KEY).json()
    assert vm["imageId"] == img["id"] and vm["diskSizeMb"] == 1024
    r = c.delete(f"/v1/images/{img['id']}", headers=KEY)
    assert r.status_code == 409 and vm["id"] in r.json()["message"]
    assert c.put(f"/v1/images/{img['id']}/kernel", content=elf(), headers=OCTET).status_code == 409
    assert c.post(f"/v1/images/{img['id']}/set-default", headers=KEY).status_code == 204
    assert c.delete(f"/v1/images/{img['id']}", headers=KEY).status_code == 409  # default
    c.delete(f"/v1/vms/{vm['id']}", headers=KEY)
    c.post("/v1/images/img-test/set-default", headers=KEY)
    assert c.delete(f"/v1/images/{img['id']}", headers=KEY).status_code == 204
    assert not image_dir.exists()
    assert c.get(f"/v1/images/{img['id']}", headers=KEY).status_code == 404


def test_image_limits_and_validation(client: TestClient, settings: Settings) -> None:
    c = client
    settings.image_kernel_max_bytes = 1000
    img = c.post("/v1/images", json={"name": "x"}, headers=KEY).json()
    assert c.put(f"/v1/images/{img['id']}/kernel", content=bytes(2000), headers=OCTET).status_code == 413
    for body in ({}, {"name": ""}, {"name": "x" * 129}, {"name": 5}, {"name": "a", "extra": 1}):
        assert c.post("/v1/images", json=body, headers=KEY).status_code == 400
    assert c.put("/v1/images/img-none/kernel", content=elf(), headers=OCTET).status_code == 404
