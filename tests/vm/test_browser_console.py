"""The browser consoles sheesh serves, in headless Chromium: xterm.js on /serial runs a shell command,
noVNC on /vnc draws the full VM's screen. Screenshots are kept in the test's temporary folder."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from sheesh.config import Settings
from sheesh.image.builder import BuiltImage
from tests.browser import Browser, Page, chromium_binary
from tests.server import ServerProcess, running_server

pytestmark = pytest.mark.vm

TERMINAL_TEXT = """(() => { const b = sheesh.term.buffer.active; let s = "";
  for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + "\\n"; return s; })()"""
LIT_PIXELS = """(() => { const c = document.querySelector("#screen canvas"); if (!c || !c.width) return 0;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) n++; return n; })()"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.fail("Chromium is not installed: scripts/test.sh installs it")
    b = Browser(binary)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    web = str(Settings().resolved_web_dir())
    with running_server(
        tmp_path_factory.mktemp("console") / "data", guest_image.path.parent.parent, SHEESH_WEB_DIR=web
    ) as srv:
        yield srv


def test_xterm_and_novnc_pages_show_the_consoles(
    console_server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    with console_server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": [], "kind": "full"}).json()["id"]
        serial_token = c.get(f"/v1/vms/{vm}/agentToken").json()["token"]
        vnc_token = c.get(f"/v1/vms/{vm}/agentToken").json()["token"]

        async def drive() -> tuple[str, int, bytes, bytes]:
            async with websockets.connect(browser.page_ws(), max_size=None) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=f"{console_server.url}/console/serial?token={serial_token}")
                await page.wait_for("window.sheesh && sheesh.state === 'connected'")
                await page.eval("sheesh.term.input('\\r'); sheesh.term.input('echo sum=$((6*7)) uid=$(id -u)\\r')")
                text = await page.wait_for(
                    f"(() => {{ const t = {TERMINAL_TEXT}; return t.includes('sum=42') && t }})()"
                )
                serial_png = await page.screenshot(tmp_path / "serial.png")
                await page.call("Page.navigate", url=f"{console_server.url}/console/vnc?token={vnc_token}")
                await page.wait_for("window.sheesh && sheesh.state === 'connected'")
                lit = await page.wait_for(f"(() => {{ const n = {LIT_PIXELS}; return n > 500 && n }})()")
                vnc_png = await page.screenshot(tmp_path / "vnc.png")
                return str(text), int(lit), serial_png, vnc_png

        text, lit, serial_png, vnc_png = asyncio.run(drive())
        assert "sum=42 uid=1000" in text
        assert lit > 500, "noVNC showed a black screen"
        for png in (serial_png, vnc_png):
            assert png.startswith(b"\x89PNG") and len(png) > 5000
        # the pages and their assets need no login: the one-time token in the URL is the credential
        r = c.get("/console/serial")
        assert r.status_code == 200 and "xterm.js" in r.text
        assert c.get("/console/page.js").text.startswith("const SHEESH_NODE_HOST")
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
