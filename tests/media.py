"""Test media for full VMs: bootable tiny ISOs and disk images that print a marker on COM1, a loopback HTTP
server for them, and a minimal RFB (VNC) client speaking through the node's /vnc WebSocket."""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import websockets
from Crypto.Cipher import DES
from websockets.exceptions import ConnectionClosed

# cli; push cs; pop ds; call next; pop si; add si, 18 (the message follows the code); mov dx, 0x3f8;
# loop: lodsb; test al, al; jz done; out dx, al; jmp loop; done: hlt; jmp done
_PRINT_TO_COM1 = bytes.fromhex("FA0E1FE800005E83C612BAF803AC84C07403EEEBF8F4EBFD")


def boot_code(message: str) -> bytes:
    """Position-independent real-mode code that writes ``message`` to COM1 and halts."""
    return _PRINT_TO_COM1 + message.encode() + b"\r\n\0"


def make_iso(dest: Path, message: str, pad_mb: int = 0) -> Path:
    """An El Torito (no emulation) bootable ISO printing ``message``; ``pad_mb`` adds a filler file."""
    tree = dest.with_suffix(".tree")
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "boot.img").write_bytes(boot_code(message).ljust(2048, b"\0"))
    if pad_mb:
        (tree / "filler.bin").write_bytes(bytes(range(256)) * (pad_mb * 4096))
    boot = ["-b", "boot.img", "-no-emul-boot", "-boot-load-size", "4"]
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(dest), "-V", "SHEESHTEST", *boot, str(tree)], check=True
    )
    return dest


def make_disk(dest: Path, message: str, fmt: str = "qcow2", size_mb: int = 64, fill_mb: int = 0) -> Path:
    """A disk image whose MBR prints ``message`` (converted to ``fmt``), with ``fill_mb`` MiB of random
    (incompressible, allocated) data after the boot sector."""
    raw = dest.with_suffix(".raw")
    with open(raw, "wb") as fh:
        fh.write(boot_code(message).ljust(510, b"\0") + b"\x55\xaa")
        for _ in range(fill_mb):
            fh.write(os.urandom(1024 * 1024))
        fh.truncate(max(size_mb, fill_mb + 1) * 1024 * 1024)
    if fmt == "raw":
        raw.rename(dest)
    else:
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, str(raw), str(dest)], check=True)
        raw.unlink()
    return dest


def make_overlay(dest: Path, backing: Path) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(dest)], check=True
    )
    return dest


class _QuietServer(http.server.ThreadingHTTPServer):
    redirects: dict[str, str]
    hosts: list[str]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that stop reading early (size limits) are expected


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    server: _QuietServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))
        if (location := self.server.redirects.get(self.path)) is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@contextmanager
def http_server(root: Path, redirects: dict[str, str] | None = None, hosts: list[str] | None = None) -> Iterator[str]:
    """Serve ``root`` on a loopback port; yields the base URL. ``redirects`` maps paths to 302 locations;
    ``hosts`` collects the Host header of each GET."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    srv = _QuietServer(("127.0.0.1", 0), handler)
    srv.redirects = redirects if redirects is not None else {}
    srv.hosts = hosts if hosts is not None else []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: DES-encrypt the challenge with the password, each key byte bit-reversed."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    return DES.new(key, DES.MODE_ECB).encrypt(challenge)


class RfbClient:
    """Just enough RFB 3.8 over a WebSocket to authenticate and read the framebuffer (raw encoding)."""

    def __init__(self, ws: object) -> None:
        self.ws = ws
        self.buf = b""

    async def _read(self, n: int, timeout: float = 30) -> bytes:
        while len(self.buf) < n:
            msg = await asyncio.wait_for(self.ws.recv(), timeout)  # type: ignore[attr-defined]
            self.buf += msg if isinstance(msg, bytes) else msg.encode()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def _send(self, data: bytes) -> None:
        await self.ws.send(data)  # type: ignore[attr-defined]

    async def login(self, password: str) -> tuple[int, int] | None:
        """Handshake with VNC auth; the framebuffer size, or None when the server refused the password."""
        version = await self._read(12)
        assert version.startswith(b"RFB 003."), version
        await self._send(b"RFB 003.008\n")
        count = (await self._read(1))[0]
        types = await self._read(count)
        assert 2 in types, f"no VNC authentication offered: {types!r}"
        await self._send(b"\x02")
        await self._send(vnc_response(password, await self._read(16)))
        (result,) = struct.unpack(">I", await self._read(4))
        if result != 0:
            return None
        await self._send(b"\x01")  # shared
        width, height = struct.unpack(">HH", await self._read(4))
        await self._read(16)  # pixel format
        (name_len,) = struct.unpack(">I", await self._read(4))
        await self._read(name_len)
        # 32 bpp true colour, raw encoding only
        fmt = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        await self._send(b"\x00\x00\x00\x00" + fmt)
        await self._send(struct.pack(">BxHi", 2, 1, 0))
        self.size = (width, height)
        return width, height

    async def lit_pixels(self) -> int:
        """Request a full framebuffer update and count the pixels that are not black."""
        width, height = self.size
        await self._send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        while True:
            kind = (await self._read(1))[0]
            if kind == 0:
                break
            if kind == 2:  # bell
                continue
            if kind == 3:  # cut text
                await self._read(3)
                (n,) = struct.unpack(">I", await self._read(4))
                await self._read(n)
                continue
            raise AssertionError(f"unexpected RFB message {kind}")
        await self._read(1)
        (rects,) = struct.unpack(">H", await self._read(2))
        lit = 0
        for _ in range(rects):
            _x, _y, w, h, enc = struct.unpack(">HHHHi", await self._read(12))
            if enc == -223:  # DesktopSize pseudo-encoding: no pixel data
                continue
            assert enc == 0, f"unexpected encoding {enc}"
            data = await self._read(w * h * 4, timeout=60)
            lit += sum(1 for i in range(0, len(data), 4) if data[i : i + 3] != b"\0\0\0")
        return lit


async def media_conversation(url: str, upload: bytes | None = None, chunk: int = 1024 * 1024) -> tuple[list[str], int]:
    """All text messages of one media connection and its close code (``upload``: answer each ``gib``)."""
    messages: list[str] = []
    offset = 0
    async with websockets.connect(url, max_size=None) as ws:
        try:
            while True:
                msg = await asyncio.wait_for(ws.recv(), 120)
                assert isinstance(msg, str), msg
                messages.append(msg)
                if msg == "gib" and upload is not None:
                    if offset >= len(upload):
                        await ws.send("EOF")
                    else:
                        await ws.send(upload[offset : offset + chunk])
                        offset += chunk
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return messages, exc.rcvd.code
    raise AssertionError("unreachable")
