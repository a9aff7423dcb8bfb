"""The node's media endpoints (/uploadIso, /downloadIso, /cloudInit, /vnc admission) on the fake driver:
message formats, limits, errors that leave the VM's files untouched."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pycdlib
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sheesh.auth.sessions import SessionSigner
from sheesh.models import VmKind
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeVmSpec
from sheesh.node.media import MediaService, cloud_config, write_seed
from sheesh.node.plumbing import GuestNet
from sheesh.node.vmfiles import CDROM_FILE, DISK_FILE, INSTALLED_MARK, SEED_FILE
from sheesh.node.ws import create_node_app
from sheesh.outbound import pinned_requests, send_first
from sheesh.vmm.fake import FakeDriver
from tests.media import http_server

MIB = 1024 * 1024


def fake_iso(size: int) -> bytes:
    data = bytearray(size)
    data[0x8001:0x8006] = b"CD001"
    return bytes(data)


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.driver = FakeDriver()
        self.agent = NodeAgent(root / "vms", self.driver)
        self.signer = SessionSigner(b"k" * 32)
        self.media = MediaService(self.agent, max_bytes=3 * MIB, max_disk_mb=2048)
        self.client = TestClient(create_node_app(self.agent, self.signer, self.media))

    def add_vm(self, vm_id: str, kind: VmKind = VmKind.FULL, disk_mb: int = 1024) -> Path:
        wd = self.agent.workdir(vm_id)
        wd.mkdir(parents=True)
        spec = NodeVmSpec(
            vm_id=vm_id,
            cpu=1,
            mem_mb=256,
            kernel=Path("k"),
            initrd=Path("i"),
            rootfs=Path("r"),
            disk_size_mb=disk_mb,
            kind=kind,
        )
        self.agent.files.remember(spec)
        (wd / DISK_FILE).write_text("original disk")
        return wd

    def url(self, path: str, vm_id: str = "vm-full") -> str:
        sep = "&" if "?" in path else "?"
        return f"{path}{sep}token={self.signer.issue(vm_id, 'agent', 60)}"

    def talk(self, path: str, vm_id: str = "vm-full", upload: list[bytes] | None = None) -> tuple[list[str], int]:
        """Messages until the server closes, and its close code; ``upload`` answers each ``gib``."""
        messages: list[str] = []
        chunks = list(upload or [])
        with self.client.websocket_connect(self.url(path, vm_id)) as ws:
            while True:
                msg = ws.receive()
                if msg["type"] == "websocket.close":
                    return messages, int(msg["code"])
                messages.append(msg["text"])
                if msg["text"] == "gib" and upload is not None:
                    if chunks:
                        ws.send_bytes(chunks.pop(0))
                    else:
                        ws.send_text("EOF")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    n.add_vm("vm-full")
    n.add_vm("vm-sandbox", VmKind.SANDBOX)
    with n.client:
        yield n


def test_upload_iso_asks_for_each_chunk_then_mounts(node: Node) -> None:
    iso = fake_iso(int(2.5 * MIB))
    chunks = [iso[i : i + MIB] for i in range(0, len(iso), MIB)]
    messages, code = node.talk("/uploadIso", upload=chunks)
    assert code == 1000
    assert messages == ["gib"] * 4  # three chunks, then EOF
    assert (node.agent.workdir("vm-full") / CDROM_FILE).read_bytes() == iso


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ([b"\0" * MIB, b"\0" * MIB], "not an ISO 9660 image"),
        ([b"\0" * (MIB + 1)], "at most 1048576 bytes"),
        ([b"\0" * MIB] * 4, "larger than the maximum of 3145728"),
        ([], "no data received"),
    ],
)
def test_bad_uploads_fail_with_err_and_keep_the_old_iso(node: Node, chunks: list[bytes], error: str) -> None:
    cdrom = node.agent.workdir("vm-full") / CDROM_FILE
    cdrom.write_bytes(b"previous")
    messages, code = node.talk("/uploadIso", upload=chunks)
    assert code == 1008 and messages[-1].startswith("!ERR") and error in messages[-1], messages
    assert all(m == "gib" for m in messages[:-1])
    assert cdrom.read_bytes() == b"previous"
    assert sorted(p.name for p in cdrom.parent.iterdir()) == sorted([CDROM_FILE, DISK_FILE, "vm.json"])


def test_text_instead_of_a_chunk_is_rejected(node: Node) -> None:
    with node.client.websocket_connect(node.url("/uploadIso")) as ws:
        assert ws.receive_text() == "gib"
        ws.send_text("hello")
        assert ws.receive_text() == "!ERRexpected a binary chunk of the ISO or EOF"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1008


def test_media_endpoints_need_a_full_vm_and_a_valid_token(node: Node) -> None:
    for path in ("/uploadIso", "/downloadIso?isoUrl=http://x/a.iso", "/cloudInit?imageUrl=http://x/a.img"):
        messages, code = node.talk(path, vm_id="vm-sandbox")
        assert code == 1008 and 'kind "full"' in messages[-1]
    with node.client.websocket_connect("/uploadIso?token=bogus") as ws:
        assert ws.receive_text().startswith("!ERRmalformed session token")
    messages, code = node.talk("/uploadIso", vm_id="vm-nope")
    assert code == 1008 and "not on node" in messages[-1]


def test_vnc_needs_a_running_full_vm(node: Node) -> None:
    for vm_id, reason in [("vm-sandbox", 'kind "full"'), ("vm-full", "not running")]:
        with node.client.websocket_connect(node.url("/vnc", vm_id)) as ws, pytest.raises(WebSocketDisconnect) as e:
            ws.receive_bytes()
        assert e.value.code == 1008 and reason in e.value.reason


def test_download_iso_reports_stages_and_progress(node: Node, tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    iso = fake_iso(2 * MIB)
    (served / "a.iso").write_bytes(iso)
    (served / "big.iso").write_bytes(fake_iso(4 * MIB))
    with http_server(served) as base:
        messages, code = node.talk(f"/downloadIso?isoUrl={base}/a.iso")
        assert code == 1000, messages
        assert messages[0] == "1Downloading ISO" and messages[-2:] == ["2Checking ISO", "3Mounting ISO"]
        progress = [int(m[3:]) for m in messages if m.startswith("!PR")]
        assert progress == sorted(progress) and progress[-1] == 100 and len(progress) >= 2
        assert (node.agent.workdir("vm-full") / CDROM_FILE).read_bytes() == iso
        for query, error in [
            (f"isoUrl={base}/big.iso", "maximum is 3145728"),
            (f"isoUrl={base}/none.iso", "HTTP 404"),
            ("isoUrl=ftp://example.invalid/a.iso", "http:// or https://"),
            ("", "URL query parameter required"),
        ]:
            messages, code = node.talk(f"/downloadIso?{query}")
            assert code == 1008 and error in messages[-1], messages
    assert (node.agent.workdir("vm-full") / CDROM_FILE).read_bytes() == iso


def test_downloads_refuse_blocked_addresses_also_after_redirects(node: Node, tmp_path: Path) -> None:
    """Loopback is served here; 127.0.0.2 stands for a blocked network (the metadata service, the node's own
    services). Names are resolved once and the checked address is used, with the name as Host."""
    served = tmp_path / "www"
    served.mkdir()
    iso = fake_iso(MIB)
    (served / "a.iso").write_bytes(iso)
    node.media.blocked = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("169.254.0.0/16"))
    redirects: dict[str, str] = {}
    hosts: list[str] = []
    with http_server(served, redirects, hosts) as base:
        port = base.rsplit(":", 1)[1]
        redirects["/hop.iso"] = f"http://localhost:{port}/a.iso"
        redirects["/evil.iso"] = f"http://127.0.0.2:{port}/a.iso"
        redirects["/loop.iso"] = "/loop.iso"
        messages, code = node.talk(f"/downloadIso?isoUrl={base}/hop.iso")
        assert code == 1000 and messages[-1] == "3Mounting ISO", messages
        assert hosts == [f"127.0.0.1:{port}", f"localhost:{port}"]
        assert (node.agent.workdir("vm-full") / CDROM_FILE).read_bytes() == iso
        for url, error in [
            (f"http://127.0.0.2:{port}/a.iso", "127.0.0.2 is 127.0.0.2, an address sheesh does not send requests to"),
            (f"{base}/evil.iso", "does not send requests to"),
            (f"http://169.254.169.254:{port}/latest/meta-data", "does not send requests to"),
            (f"{base}/loop.iso", "more than 5 redirects"),
            ("http://name.invalid/a.iso", "cannot resolve name.invalid"),
        ]:
            messages, code = node.talk(f"/downloadIso?isoUrl={url}")
            assert code == 1008 and error in messages[-1], messages
        node.media.blocked = (ipaddress.ip_network("127.0.0.0/8"),)
        messages, code = node.talk(f"/cloudInit?imageUrl=http://localhost:{port}/a.iso")
        assert code == 1008 and "localhost is 127.0.0.1" in messages[-1], messages
    assert (node.agent.workdir("vm-full") / CDROM_FILE).read_bytes() == iso
    assert (node.agent.workdir("vm-full") / DISK_FILE).read_text() == "original disk"


def test_a_host_with_several_addresses_falls_through_to_one_that_answers(tmp_path: Path) -> None:
    (tmp_path / "a.iso").write_bytes(b"iso")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # bound, not listening: connections are refused

        async def get(base: str) -> bytes:
            async with httpx.AsyncClient() as client:
                refused = client.build_request("GET", f"http://127.0.0.1:{dead}/a.iso")
                requests = [
                    refused,
                    *await pinned_requests(client, f"{base}/a.iso", [ipaddress.ip_network("10.0.0.0/8")]),
                ]
                resp = await send_first(client, requests)
                return await resp.aread()

        with http_server(tmp_path) as base:
            assert asyncio.run(get(base)) == b"iso"


def test_one_media_operation_per_vm(node: Node) -> None:
    with node.client.websocket_connect(node.url("/uploadIso")) as first:
        assert first.receive_text() == "gib"
        messages, code = node.talk("/uploadIso")
        assert code == 1013 and "in progress" in messages[-1]
        first.send_text("EOF")
        assert first.receive_text().startswith("!ERR")


def test_cloud_init_replaces_the_disk_and_writes_a_seed(node: Node, tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "ok.img").write_text(json.dumps({"format": "qcow2", "virtual_size": 512 * MIB}))
    (served / "overlay.img").write_text(json.dumps({"format": "qcow2", "virtual_size": MIB, "backing_file": "/x"}))
    (served / "big.img").write_text(json.dumps({"format": "qcow2", "virtual_size": 2048 * MIB}))
    wd = node.agent.workdir("vm-full")
    (wd / CDROM_FILE).write_bytes(b"an installer")
    with http_server(served) as base:
        for name, error in [("overlay.img", "backing file"), ("big.img", "larger diskSizeMb")]:
            messages, code = node.talk(f"/cloudInit?imageUrl={base}/{name}")
            assert code == 1008 and error in messages[-1], messages
            assert (wd / DISK_FILE).read_text() == "original disk"
        messages, code = node.talk(f"/cloudInit?imageUrl={base}/ok.img&password=pw&sshKey=ssh-ed25519%20K")
    assert code == 1000, messages
    stages = [m for m in messages if not m.startswith("!PR")]
    assert stages == [
        "1Downloading image",
        "2Checking image",
        "3Converting qcow2 image",
        "4Writing cloud-init seed",
        "5Installing image",
    ]
    assert json.loads((wd / DISK_FILE).read_text()) == {"base": None, "converted_from": "qcow2", "size_mb": 1024}
    assert (wd / INSTALLED_MARK).exists() and not (wd / CDROM_FILE).exists()
    iso = pycdlib.PyCdlib()
    iso.open(str(wd / SEED_FILE))
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, joliet_path="/user-data")
    iso.close()
    assert buf.getvalue().decode() == cloud_config("vm-full", "pw", "ssh-ed25519 K")
    spec = node.agent.machine_spec(node.agent.spec_of("vm-full"))
    assert spec.full and spec.firmware_boot and spec.seed == wd / SEED_FILE and spec.cdrom is None


def test_cloud_config_is_json_yaml() -> None:
    text = cloud_config("vm-1", None, None)
    assert text.startswith("#cloud-config\n")
    assert json.loads(text.split("\n", 1)[1]) == {"hostname": "vm-1", "preserve_hostname": False}


def test_seed_carries_the_static_network(tmp_path: Path) -> None:
    net = GuestNet(ip="10.77.0.9", prefix=16, gateway="10.77.0.1", mac="52:54:0a:4d:00:09", dns=("10.0.0.53",))
    write_seed(tmp_path / "seed.iso", "vm-x", None, None, net)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "seed.iso"))
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, rr_path="/network-config")
    iso.close()
    config = json.loads(buf.getvalue())
    nic = config["ethernets"]["eth0"]
    assert config["version"] == 2 and nic["match"] == {"macaddress": "52:54:0a:4d:00:09"}
    assert nic["addresses"] == ["10.77.0.9/16"] and nic["routes"] == [{"to": "0.0.0.0/0", "via": "10.77.0.1"}]
    assert nic["nameservers"] == {"addresses": ["10.0.0.53"]}
    write_seed(tmp_path / "plain.iso", "vm-x", None, None)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "plain.iso"))
    names = sorted(c.rock_ridge.name().decode() for c in iso.list_children(rr_path="/") if c.rock_ridge and c.is_file())
    iso.close()
    assert names == ["meta-data", "user-data"]
