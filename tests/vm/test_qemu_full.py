"""Full (VPS-style) VMs on real QEMU, driven through the node's Kyun WebSocket endpoints: the VGA console
over /vnc, ISOs by /downloadIso and /uploadIso booted by the firmware, cloud images installed by /cloudInit.
Media come from a loopback HTTP server the test runs; the boot code in them prints a marker on COM1."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pycdlib
import pytest
import websockets

from sheesh.image.builder import BuiltImage
from tests.media import RfbClient, http_server, make_disk, make_iso, make_overlay, media_conversation
from tests.server import ServerProcess, running_server

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def full_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    """A server whose stop timeout is short: a VM halted in boot code ignores ACPI and is killed."""
    data = tmp_path_factory.mktemp("full") / "data"
    limits = {
        "SHEESH_STOP_TIMEOUT_S": "2",
        "SHEESH_MEDIA_MAX_BYTES": str(8 * 1024 * 1024),
        "SHEESH_MEDIA_BLOCKED_NETWORKS": '["169.254.0.0/16"]',  # the test's media server is on loopback
    }
    with running_server(data, guest_image.path.parent.parent, **limits) as srv:
        yield srv


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("media")
    with http_server(root) as url:
        yield url, root


def _node_url(srv: ServerProcess, c: httpx.Client, vm: str, path: str) -> str:
    token = c.get(f"/v1/vms/{vm}/agentToken").json()["token"]
    sep = "&" if "?" in path else "?"
    return f"ws://127.0.0.1:{srv.node_port}{path}{sep}token={token}"


def _wait_serial(c: httpx.Client, vm: str, marker: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines: list[str] = c.get(f"/v1/vms/{vm}/logs", params={"type": "serial.log", "tail": 200}).json()["lines"]
        if any(marker in line for line in lines):
            return lines
        assert time.monotonic() < deadline, f"{marker} not in serial log: {lines[-20:]}"
        time.sleep(0.5)


def _restart(c: httpx.Client, vm: str) -> None:
    assert c.post(f"/v1/vms/{vm}/stop").status_code == 204
    assert c.post(f"/v1/vms/{vm}/start").status_code == 204
    assert c.get(f"/v1/vms/{vm}").json()["state"] == "RUNNING"


def _create_full(c: httpx.Client, **extra: Any) -> str:
    resp = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": [], "kind": "full", **extra})
    assert resp.status_code == 201, resp.text
    assert resp.json()["kind"] == "full"
    return str(resp.json()["id"])


def test_full_vm_runs_the_agent_and_shows_its_console_over_vnc(full_server: ServerProcess) -> None:
    with full_server.client() as c:
        vm = _create_full(c)
        out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "cat /proc/cmdline; id -u"}).json()
        assert "sheesh.full=1" in out["stdout"] and out["stdout"].split()[-1] == "1000"
        assert c.post(f"/v1/vms/{vm}/snapshots").status_code == 409

        async def view(token: str, password: str) -> tuple[tuple[int, int] | None, int]:
            async with websockets.connect(
                f"ws://127.0.0.1:{full_server.node_port}/vnc?token={token}", subprotocols=["binary"], max_size=None
            ) as ws:
                assert ws.subprotocol == "binary"
                rfb = RfbClient(ws)
                size = await rfb.login(password)
                if size is None:
                    return None, 0
                lit = 0
                deadline = time.monotonic() + 60
                while lit < 500 and time.monotonic() < deadline:  # the login prompt drawn on the VGA console
                    lit = await rfb.lit_pixels()
                    await asyncio.sleep(0.5)
                return size, lit

        token = c.get(f"/v1/vms/{vm}/agentToken").json()["token"]
        size, lit = asyncio.run(view(token, token[:8]))
        assert size is not None and size[0] >= 640 and size[1] >= 400
        assert lit >= 500, "the VGA console stayed black"
        other = c.get(f"/v1/vms/{vm}/agentToken").json()["token"]
        assert other[:8] != token[:8]
        assert asyncio.run(view(other, token[:8])) == (None, 0), "a stale VNC password was accepted"

        async def login(token: str) -> tuple[int, int] | None:
            url = f"ws://127.0.0.1:{full_server.node_port}/vnc?token={token}"
            async with websockets.connect(url, subprotocols=["binary"], max_size=None) as ws:
                return await RfbClient(ws).login(token[:8])

        async def together(tokens: list[str]) -> list[tuple[int, int] | None]:
            return list(await asyncio.gather(*(login(t) for t in tokens)))

        # viewers logging in at the same moment each get in with their own password (logins are serialized)
        sizes = asyncio.run(together([c.get(f"/v1/vms/{vm}/agentToken").json()["token"] for _ in range(3)]))
        assert sizes == [size] * 3
        assert c.delete(f"/v1/vms/{vm}").status_code == 204


def test_download_and_upload_iso_then_boot_them(full_server: ServerProcess, media: tuple[str, Path]) -> None:
    base, root = media
    make_iso(root / "a.iso", "SHEESH-ISO-A-BOOTED")
    iso_b = make_iso(root / "b.iso", "SHEESH-ISO-B-BOOTED", pad_mb=3).read_bytes()
    (root / "notiso.bin").write_bytes(b"\0" * 70000)
    with full_server.client() as c:
        vm = _create_full(c)
        # live insert into the running VM: the guest's CD-ROM gets a medium
        url = _node_url(full_server, c, vm, f"/downloadIso?isoUrl={base}/a.iso")
        messages, code = asyncio.run(media_conversation(url))
        assert code == 1000, messages
        assert messages[0] == "1Downloading ISO" and messages[-2:] == ["2Checking ISO", "3Mounting ISO"]
        assert "!PR100" in messages
        sr0 = {"cmd": "cat /sys/block/sr0/size"}
        assert int(c.post(f"/v1/vms/{vm}/exec", json=sr0).json()["stdout"]) > 0
        assert c.delete(f"/v1/vms/{vm}/cdrom").status_code == 204  # live eject (QMP)
        assert not (full_server.data_dir / "vms" / vm / "cdrom.iso").exists()
        url = _node_url(full_server, c, vm, f"/downloadIso?isoUrl={base}/a.iso")
        assert asyncio.run(media_conversation(url))[1] == 1000
        _restart(c, vm)
        _wait_serial(c, vm, "SHEESH-ISO-A-BOOTED")

        url = _node_url(full_server, c, vm, "/uploadIso")
        messages, code = asyncio.run(media_conversation(url, upload=iso_b))
        assert code == 1000, messages
        assert set(messages) == {"gib"} and len(messages) == -(-len(iso_b) // (1024 * 1024)) + 1
        _restart(c, vm)
        _wait_serial(c, vm, "SHEESH-ISO-B-BOOTED")

        for path, error in [
            (f"/downloadIso?isoUrl={base}/missing.iso", "HTTP 404"),
            (f"/downloadIso?isoUrl={base}/notiso.bin", "not an ISO 9660 image"),
            ("/downloadIso?isoUrl=file:///etc/passwd", "http://"),
            ("/downloadIso?isoUrl=http://169.254.169.254/latest/meta-data/", "does not send requests to"),
            (
                f"/cloudInit?imageUrl=http://{c.get(f'/v1/vms/{vm}').json()['guestIp']}:8000/x.img",
                "does not send requests to",
            ),
        ]:
            messages, code = asyncio.run(media_conversation(_node_url(full_server, c, vm, path)))
            assert code != 1000 and messages[-1].startswith("!ERR") and error in messages[-1], messages
        big = b"\0" * (9 * 1024 * 1024)
        messages, code = asyncio.run(media_conversation(_node_url(full_server, c, vm, "/uploadIso"), upload=big))
        assert code != 1000 and "larger than the maximum" in messages[-1], messages
        # the failures changed nothing: ISO B still boots
        _restart(c, vm)
        _wait_serial(c, vm, "SHEESH-ISO-B-BOOTED")
        assert c.delete(f"/v1/vms/{vm}").status_code == 204


def test_cloud_init_installs_an_image_with_a_seed(full_server: ServerProcess, media: tuple[str, Path]) -> None:
    base, root = media
    image = make_disk(root / "cloud.qcow2", "SHEESH-DISK-BOOTED")
    make_overlay(root / "overlay.qcow2", image)
    make_disk(root / "huge.qcow2", "X", size_mb=4096)
    with full_server.client() as c:
        sandbox = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()["id"]
        messages, code = asyncio.run(
            media_conversation(_node_url(full_server, c, sandbox, f"/cloudInit?imageUrl={base}/cloud.qcow2"))
        )
        assert code == 1008 and "sandbox" in messages[-1], messages
        assert c.delete(f"/v1/vms/{sandbox}").status_code == 204

        vm = _create_full(c, diskSizeMb=1024)
        for name, error in [("overlay.qcow2", "backing file"), ("huge.qcow2", "larger diskSizeMb")]:
            url = _node_url(full_server, c, vm, f"/cloudInit?imageUrl={base}/{name}")
            messages, code = asyncio.run(media_conversation(url))
            assert code != 1000 and error in messages[-1], messages
        assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).json()["exitCode"] == 0

        query = f"imageUrl={base}/cloud.qcow2&password=s3cret&sshKey=ssh-ed25519%20AAAA%20me"
        url = _node_url(full_server, c, vm, f"/cloudInit?{query}")
        messages, code = asyncio.run(media_conversation(url))
        assert code == 1000, messages
        stages = [m for m in messages if not m.startswith("!PR")]
        assert [s[0] for s in stages] == ["1", "2", "3", "4", "5"], stages
        assert stages[2] == "3Converting qcow2 image" and stages[4].startswith("5Installing image, restarting")
        assert "!PR100" in messages
        assert c.get(f"/v1/vms/{vm}").json()["state"] == "RUNNING"
        _wait_serial(c, vm, "SHEESH-DISK-BOOTED")

        workdir = full_server.data_dir / "vms" / vm
        iso = pycdlib.PyCdlib()
        iso.open(str(workdir / "seed.iso"))
        try:
            found: dict[str, bytes] = {}
            for name in ("user-data", "meta-data", "network-config"):
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
                found[name] = buf.getvalue()
            label = iso.pvd.volume_identifier.decode().strip()
        finally:
            iso.close()
        assert label == "cidata"
        assert found["user-data"].startswith(b"#cloud-config\n") and b'"password": "s3cret"' in found["user-data"]
        assert b"ssh-ed25519 AAAA me" in found["user-data"] and f"local-hostname: {vm}".encode() in found["meta-data"]
        guest_ip = c.get(f"/v1/vms/{vm}").json()["guestIp"]
        assert f'"{guest_ip}/16"'.encode() in found["network-config"], "the static address for the image's NIC"
        # the installed disk survives a restart and is what boots
        _restart(c, vm)
        _wait_serial(c, vm, "SHEESH-DISK-BOOTED")
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
