"""``sheesh console``: this terminal on a VM's serial console, through the node's ``/serial`` WebSocket.

The API gives a one-time agent token and the node's URL; bytes then pass unchanged both ways (the terminal
is put in raw mode when it is one). ``Ctrl-]`` detaches, as in telnet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator

import httpx
import websockets
from websockets.exceptions import ConnectionClosed

from sheesh.errors import SheeshError

ESCAPE = b"\x1d"  # Ctrl-]


class ConsoleError(SheeshError):
    """The console could not be reached; the message says why."""


def agent_url(api_url: str, api_key: str, vm_id: str, otp: str | None = None) -> str:
    """The ``/serial`` URL (with a fresh one-time token) of ``vm_id``; ConsoleError on an API error."""
    headers = {"X-API-Key": api_key, **({"X-OTP": otp} if otp else {})}
    try:
        resp = httpx.get(f"{api_url.rstrip('/')}/v1/vms/{vm_id}/agentToken", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ConsoleError(f"cannot reach the API at {api_url}: {exc}") from exc
    if resp.status_code != 200:
        try:
            message = str(resp.json()["message"])
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise ConsoleError(f"agentToken: HTTP {resp.status_code}: {message}")
    grant = resp.json()
    return f"{grant['url']}/serial?token={grant['token']}"


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on ``fd`` while inside (no-op when it is not a terminal), restored on exit."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # (TCSAFLUSH, the default, would drop keys typed ahead)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attach(url: str, stdin_fd: int, stdout_fd: int) -> str:
    """Bridge ``stdin_fd``/``stdout_fd`` to the console at ``url`` until ``Ctrl-]`` on stdin, end of stdin
    or the server closing; returns why it ended. ConsoleError if the node refuses the connection."""
    loop = asyncio.get_running_loop()
    incoming: asyncio.Queue[bytes] = asyncio.Queue()
    loop.add_reader(stdin_fd, lambda: incoming.put_nowait(os.read(stdin_fd, 4096)))
    try:
        async with websockets.connect(url, max_size=None) as ws:

            async def upstream() -> str:
                while True:
                    data = await incoming.get()
                    if not data:
                        return "end of input"
                    head, escaped, _ = data.partition(ESCAPE)
                    if head:
                        await ws.send(head)
                    if escaped:
                        return "detached"

            async def downstream() -> str:
                async for message in ws:
                    os.write(stdout_fd, message if isinstance(message, bytes) else message.encode())
                return f"closed by the node ({ws.close_code}{': ' + ws.close_reason if ws.close_reason else ''})"

            tasks = {asyncio.create_task(upstream()), asyncio.create_task(downstream())}
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            return done.pop().result()
    except ConnectionClosed as exc:
        reason = exc.rcvd.reason if exc.rcvd is not None else "connection lost"
        raise ConsoleError(f"the node closed the console: {reason}") from exc
    except (OSError, websockets.InvalidHandshake) as exc:
        raise ConsoleError(f"cannot connect to the node at {url.split('?', maxsplit=1)[0]}: {exc}") from exc
    finally:
        loop.remove_reader(stdin_fd)


def run(api_url: str, api_key: str, vm_id: str, otp: str | None = None) -> str:
    """``sheesh console``: attach this process's terminal; returns why it ended."""
    url = agent_url(api_url, api_key, vm_id, otp)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    if os.isatty(stdin):
        os.write(stdout, b"Connected to the serial console of " + vm_id.encode() + b" (Ctrl-] to detach)\r\n")
    with raw_terminal(stdin):
        return asyncio.run(attach(url, stdin, stdout))
