"""A custom image uploaded through /v1/images boots and runs commands; in-use images are protected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sheesh.image.builder import BuiltImage
from tests.server import ServerProcess

pytestmark = pytest.mark.vm
OCTET = {"content-type": "application/octet-stream"}


def _stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            yield chunk


def test_upload_boot_and_protect_custom_image(shared_server: ServerProcess, guest_image: BuiltImage) -> None:
    with shared_server.client(timeout=300) as c:
        builtin = next(i for i in c.get("/v1/images").json() if i["isDefault"])
        size = guest_image.rootfs_size_mb
        assert builtin["ready"] is True and builtin["rootfsSizeMb"] == size
        img = c.post("/v1/images", json={"name": "copy-of-builtin", "description": "re-uploaded"}).json()
        r = c.put(f"/v1/images/{img['id']}/kernel", content=_stream(guest_image.kernel), headers=OCTET)
        assert r.status_code == 200, r.text
        r = c.put(f"/v1/images/{img['id']}/rootfs", content=_stream(guest_image.rootfs), headers=OCTET)
        assert r.status_code == 200, r.text
        assert r.json()["ready"] is True and r.json()["rootfsSizeMb"] == size
        shape = {"cpu": 1, "memMb": 256, "allowIps": [], "imageId": img["id"], "diskSizeMb": size}
        r = c.post("/v1/vms", json=shape)
        assert r.status_code == 201, r.text
        vm = r.json()["id"]
        out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "id -u; df -m --output=size / | tail -1"}).json()
        assert out["stdout"].split()[0] == "1000" and size * 0.8 < int(out["stdout"].split()[1]) <= size
        assert c.delete(f"/v1/images/{img['id']}").status_code == 409
        assert c.put(f"/v1/images/{img['id']}/kernel", content=b"x", headers=OCTET).status_code == 409
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
        assert c.delete(f"/v1/images/{img['id']}").status_code == 204
        assert c.delete(f"/v1/images/{builtin['id']}").status_code == 409
