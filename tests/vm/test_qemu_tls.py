"""TLS on real VMs: with SHEESH_TLS=self-signed the API answers over https:// and the node's /serial and /vnc over
wss://, checked against the certificate the server made; plain HTTP to those ports gets nowhere."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import httpx
import pytest
import websockets

from sheesh.image.builder import BuiltImage
from tests.media import RfbClient
from tests.server import ServerProcess, running_server
from tests.vm.test_qemu_console import _read_until

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("tls") / "data"
    with running_server(data, guest_image.path.parent.parent, SHEESH_TLS="self-signed") as srv:
        yield srv


def test_api_and_node_endpoints_over_tls(tls_server: ServerProcess) -> None:
    assert tls_server.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(tls_server.cert))
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by default
        httpx.get(tls_server.url + "/openapi.json", timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/openapi.json", timeout=5)
    with tls_server.client() as c:
        assert c.get("/openapi.json").json()["openapi"] == "3.0.3"
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": [], "kind": "full"}).json()["id"]
        grant = c.get(f"/v1/vms/{vm}/agentToken").json()
        assert grant["url"] == f"wss://127.0.0.1:{tls_server.node_port}"

        async def serial(token: str) -> bytes:
            async with websockets.connect(f"{grant['url']}/serial?token={token}", ssl=context) as ws:
                await ws.send("\n")
                await ws.send("echo tls=$((40+2))\n")
                return await _read_until(ws, b"tls=42")

        assert b"tls=42" in asyncio.run(serial(grant["token"]))

        async def vnc(token: str) -> tuple[int, int] | None:
            url = f"{grant['url']}/vnc?token={token}"
            async with websockets.connect(url, ssl=context, subprotocols=["binary"], max_size=None) as ws:
                return await RfbClient(ws).login(token[:8])

        token = c.get(f"/v1/vms/{vm}/agentToken").json()["token"]
        size = asyncio.run(vnc(token))
        assert size is not None and size[0] >= 640, "the VGA display over wss://"

        async def plain() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{tls_server.node_port}/serial?token=x", open_timeout=5):
                pass

        with pytest.raises((OSError, websockets.exceptions.InvalidMessage, TimeoutError)):
            asyncio.run(plain())
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
