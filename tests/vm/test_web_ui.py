"""The web UI in a real browser (Playwright driving the system Chromium) on a real VM: log in, create a VM,
run `echo hi` in the exec box, open the serial console and see a prompt, upload a file and list it, delete the
VM, log out; a non-admin is refused the users page; a form posted from another site of the same host (which
SameSite lets the cookie go along with) is refused without the CSRF token. Screenshots of the main pages go to
the test's temporary folder, or to ``SHEESH_UI_SCREENSHOTS`` when set (the docs' pictures)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from sheesh.config import Settings
from sheesh.image.builder import BuiltImage
from tests.browser import chromium_binary
from tests.server import ServerProcess, running_server

pytestmark = pytest.mark.vm
PASSWORD = "correct horse battery"
BOOT_MS = 180_000
TERMINAL_TEXT = """() => { const s = window.sheesh; if (!s || s.state !== "connected") return "";
  const b = s.term.buffer.active; let t = "";
  for (let i = 0; i < b.length; i++) t += b.getLine(i).translateToString(true) + "\\n"; return t; }"""


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    web = str(Settings().resolved_web_dir())
    data = tmp_path_factory.mktemp("ui") / "data"
    with running_server(data, guest_image.path.parent.parent, SHEESH_WEB_DIR=web) as srv, srv.client() as c:
        for name, role in (("ops", "admin"), ("dev", "user")):
            body = {"username": name, "password": PASSWORD, "role": role}
            c.post("/v1/users", json=body).raise_for_status()
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.fail("Chromium is not installed: scripts/setup.sh --test-deps installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    dest = Path(os.environ.get("SHEESH_UI_SCREENSHOTS") or tmp_path)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def log_in(page: Page, url: str, username: str) -> None:
    page.goto(url + "/")  # a browser at the root is sent to the UI, which asks for a login
    expect(page).to_have_url(url + "/ui/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("#login")
    expect(page).to_have_url(url + "/ui/vms")


def test_admin_drives_a_vm_from_the_browser(ui_server: ServerProcess, browser: Browser, shots: Path) -> None:
    url = ui_server.url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.on("dialog", lambda d: d.accept())
    log_in(page, url, "ops")
    page.screenshot(path=str(shots / "login-then-vms.png"))

    page.fill("#create-vm input[name=memMb]", "256")
    page.click("#create")
    page.wait_for_url(f"{url}/ui/vms/*", timeout=BOOT_MS)
    vm_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#vm-state")).to_have_text("RUNNING", timeout=BOOT_MS)

    expect(page.locator("#usage-mem")).to_contain_text("MiB", timeout=30_000)
    mem_mb = float(page.locator("#usage-mem b").inner_text().split()[0])
    assert 10 < mem_mb < 400, f"QEMU's PSS for a 256 MiB VM: {mem_mb} MiB"

    page.fill("#exec-cmd", "echo hi")
    page.click("#exec-run")
    expect(page.locator("#exec-stdout")).to_have_text("hi\n", timeout=BOOT_MS)

    page.click("#open-serial")
    frame = page.frame_locator("#serial-frame")
    frame.locator(".xterm").click()
    terminal = page.frame(url=lambda u: "/console/serial" in u)
    assert terminal is not None
    terminal.wait_for_function(TERMINAL_TEXT.replace("return t;", "return t.length > 0;"), timeout=60_000)
    page.keyboard.press("Enter")
    page.keyboard.type("echo ui-$((6*7))")
    page.keyboard.press("Enter")
    text = terminal.wait_for_function(
        f"() => {{ const t = ({TERMINAL_TEXT})(); return t.includes('ui-42') && t; }}", timeout=60_000
    ).json_value()
    assert "$ " in text, f"no shell prompt on the serial console:\n{text}"

    page.set_input_files(
        "#upload-files", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello from the browser\n"}]
    )
    page.click("#upload")
    expect(page.locator("#file-list")).to_contain_text("notes.txt", timeout=60_000)
    expect(page.locator("#file-list")).to_contain_text("uploaded notes.txt to /workspace")
    page.fill("#exec-cmd", "cat /workspace/notes.txt")
    page.click("#exec-run")
    expect(page.locator("#exec-stdout")).to_have_text("hello from the browser\n")
    page.screenshot(path=str(shots / "vm.png"), full_page=True)

    page.click("#vm-delete")
    expect(page).to_have_url(url + "/ui/vms", timeout=60_000)
    expect(page.locator("#vm-rows")).not_to_contain_text(vm_id)
    with ui_server.client() as c:
        assert c.get(f"/v1/vms/{vm_id}").status_code == 404

    page.click("#logout")
    expect(page).to_have_url(url + "/ui/login")
    page.goto(url + "/ui/vms")
    expect(page).to_have_url(url + "/ui/login")
    page.close()


def test_a_user_is_refused_the_admin_pages(ui_server: ServerProcess, browser: Browser, shots: Path) -> None:
    page = browser.new_page()
    log_in(page, ui_server.url, "dev")
    expect(page.locator("header nav")).not_to_contain_text("Users")
    response = page.goto(ui_server.url + "/ui/users")
    assert response is not None and response.status == 403
    expect(page.locator(".error")).to_have_text("admin role required")
    page.goto(ui_server.url + "/ui/keys")
    page.screenshot(path=str(shots / "keys.png"))
    page.close()


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another site on the same host: a page whose form posts to the UI as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}/ui/vms"><input name="cpu" value="1">'
            '<input name="memMb" value="256"></form><script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_cross_site_form_post_is_refused(ui_server: ServerProcess, browser: Browser) -> None:
    page = browser.new_page()
    log_in(page, ui_server.url, "ops")
    _Attacker.target = ui_server.url
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        with page.expect_response(lambda r: r.url == ui_server.url + "/ui/vms" and r.request.method == "POST") as info:
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        assert info.value.status == 403
        expect(page.locator(".error")).to_contain_text("CSRF token")
    finally:
        attacker.shutdown()
        attacker.server_close()
    with ui_server.client() as c:
        assert c.get("/v1/vms").json() == [], "the forged post created nothing"
    assert httpx.get(ui_server.url + "/ui/static/ui.css").status_code == 200
    page.close()


def test_admin_uploads_a_kernel_with_progress_and_sees_the_nodes(
    ui_server: ServerProcess, browser: Browser, guest_image: BuiltImage, shots: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    log_in(page, ui_server.url, "ops")
    page.goto(ui_server.url + "/ui/images")
    page.fill("input[name=name]", "from-the-browser")
    page.click("#create-image")
    row = page.locator("tr", has_text="from-the-browser")
    expect(row).to_be_visible()
    image_id = row.get_attribute("data-image")
    kernel = guest_image.path / "vmlinux"
    page.set_input_files(f"#kernel-{image_id}", str(kernel))
    expect(page.locator(f"#kernel-{image_id}-status")).to_have_text("uploaded", timeout=120_000)
    assert page.locator(f"#kernel-{image_id}-progress").evaluate("p => p.value") == 100
    page.screenshot(path=str(shots / "images.png"))
    with ui_server.client() as c:
        images = {i["id"]: i for i in c.get("/v1/images").json()}
        assert images[image_id]["ready"] is False, "a kernel without a rootfs is not ready"
        assert c.delete(f"/v1/images/{image_id}").status_code == 204
    page.goto(ui_server.url + "/ui/nodes")
    expect(page.locator("#nodes")).to_contain_text("READY")
    page.screenshot(path=str(shots / "nodes.png"))
    page.close()
