"""The Python SDK (``sheesh.client``) against a real server: uvicorn serving the whole stack on the fake VMM (the
guest agent runs as host processes), sync and async, HTTP and the streaming WebSocket."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sheesh.client import (
    AsyncSheesh,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    Sheesh,
    StreamExit,
    StreamOutput,
)
from sheesh.config import Settings

KEY = "test-key"


@pytest.fixture
def client(served_url: str) -> Iterator[Sheesh]:
    with Sheesh(served_url, KEY) as c:
        yield c


def test_create_exec_files_and_delete_on_exit(client: Sheesh, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "hello.txt").write_text("hi there\n")
    with client.vms.create(cpu=1, mem_mb=128, allow_ips=["172.16.0.1/32"], timeout_s=3600) as vm:
        assert vm.state == "RUNNING" and vm.mem_mb == 128 and vm.expires_at is not None
        result = vm.exec("echo $GREETING; exit 3", env={"GREETING": "hello"})
        assert (result.exit_code, result.stdout, result.ok) == (3, "hello\n", False)
        timing = vm.exec("sleep 0.2").timing  # the server's Server-Timing: the agent's part within the node's
        assert 200 <= timing["guest"] <= timing["node"] <= timing["exec"], timing
        vm.files.upload(tmp_path / "up", "/workspace/in")
        vm.files.upload(tmp_path / "up" / "hello.txt", "/workspace/one")
        assert vm.exec("cat in/hello.txt one/hello.txt").stdout == "hi there\n" * 2  # (cwd: the workspace)
        vm.exec("mkdir -p out/sub && echo made > out/sub/f")
        assert "sub/f" in vm.files.download("/workspace/out", tmp_path / "down")
        assert (tmp_path / "down" / "sub" / "f").read_text() == "made\n"
        assert [v.id for v in client.vms.list()] == [vm.id]
        assert client.vms.get(vm.id).guest_ip == vm.guest_ip
        assert vm.exec_logs(limit=5)[0].command.startswith("mkdir")
        assert vm.set_timeout(None).expires_at is None
        vm_id = vm.id
    with pytest.raises(NotFoundError, match=vm_id):
        client.vms.get(vm_id)


def test_typed_errors_carry_the_servers_message(served_url: str, client: Sheesh) -> None:
    with pytest.raises(BadRequestError, match="memMb"):
        client.vms.create(mem_mb=1)
    with pytest.raises(NotFoundError) as missing:
        client.vms.get("vm-nope")
    assert missing.value.status == 404 and "vm-nope" in missing.value.message
    with Sheesh(served_url, "wrong-key") as bad, pytest.raises(AuthenticationError):
        bad.vms.list()
    vm = client.vms.create()
    vm.pause()
    with pytest.raises(ConflictError, match="paused"):
        vm.pause()
    vm.resume()
    vm.delete()


def test_streaming_stdin_and_pty(client: Sheesh) -> None:
    with client.vms.create(mem_mb=128) as vm:
        got: list[tuple[float, bytes]] = []
        start = time.monotonic()
        end = vm.exec_stream(
            "echo one; sleep 1; echo two >&2", on_stdout=lambda b: got.append((time.monotonic() - start, b))
        )
        assert end.ok and got[0][1] == b"one\n" and got[0][0] < 0.9
        out: list[bytes] = []
        assert vm.exec_stream("cat; printf '\\377'", stdin=b"piped \xfe\n", on_stdout=out.append).ok
        assert b"".join(out) == b"piped \xfe\n\xff"
        with vm.pty("stty size; read x; stty size", rows=33, cols=99) as term:
            seen = bytearray()
            events = iter(term)
            while b"33 99" not in seen:
                event = next(events)
                assert isinstance(event, StreamOutput)
                seen.extend(event.data)
            term.resize(44, 111)
            term.send(b"\r")
            rest = b"".join(e.data for e in events if isinstance(e, StreamOutput))
            assert b"44 111" in rest and term.result is not None and term.result.exit_code == 0
        with vm.open_stream("sleep 60") as session:
            session.kill()
            assert session.wait().exit_code == 137


def test_snapshots_fork_logs(client: Sheesh) -> None:
    vm = client.vms.create(mem_mb=128)
    try:
        snap = vm.snapshot()
        assert [s.id for s in client.snapshots.list()] == [snap.id] and snap.vm_id == vm.id
        clones = vm.fork(2)
        assert len(clones) == 2 and all(c.state == "RUNNING" for c in clones)
        for clone in clones:
            clone.delete()
        assert isinstance(vm.logs(tail=5), list)
    finally:
        vm.delete()
    assert client.users.me().username == "admin"
    key = client.api_keys.create("sdk")
    assert key.key and key.id in [k.id for k in client.api_keys.list()]
    client.api_keys.delete(key.id)
    assert [i.id for i in client.images.list()] == ["img-test"]


def test_429_is_retried_after_retry_after(settings: Settings) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) < 3:
            return httpx.Response(429, json={"message": "slow down"}, headers={"Retry-After": "0.2"})
        return httpx.Response(200, json=[])

    http = httpx.Client(base_url="http://sheesh.test", transport=httpx.MockTransport(handler))
    with Sheesh("http://sheesh.test", KEY, http=http) as c:
        assert c.vms.list() == []
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.35
    calls.clear()
    http = httpx.Client(base_url="http://sheesh.test", transport=httpx.MockTransport(handler))
    with Sheesh("http://sheesh.test", KEY, http=http, max_retries=1) as c, pytest.raises(RateLimitError) as limited:
        c.vms.list()
    assert limited.value.retry_after_s == 0.2 and len(calls) == 2


def test_async_client(served_url: str) -> None:
    async def main() -> None:
        async with AsyncSheesh(served_url, KEY) as client:
            async with await client.vms.create(mem_mb=128) as vm:
                echoed = await vm.exec("echo async")
                assert echoed.stdout == "async\n" and echoed.timing.keys() == {"exec", "node", "guest"}
                chunks: list[bytes] = []
                end = await vm.exec_stream("cat", stdin="in\n", on_stdout=chunks.append)
                assert end.ok and b"".join(chunks) == b"in\n"
                async with await vm.open_stream("echo a; exit 4") as session:
                    events = [e async for e in session]
                assert isinstance(events[-1], StreamExit) and events[-1].exit_code == 4
                assert (await client.vms.get(vm.id)).id == vm.id
            assert await client.vms.list() == []

    asyncio.run(main())


def test_environment_and_saved_login(served_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("SHEESH_URL", raising=False)
    monkeypatch.delenv("SHEESH_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="sheesh login"):
        Sheesh()
    from sheesh.client.config import save_config

    path = save_config(served_url, "wrong")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("SHEESH_API_KEY", KEY)  # the environment wins over the saved login
    with Sheesh() as c:
        assert c.base_url == served_url and c.vms.list() == []


def test_the_sdk_imports_without_the_servers_dependencies() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi','starlette','pydantic','pydantic_settings','sqlalchemy',\n"
        "            'uvicorn','alembic','psycopg','argon2','cryptography','typer','rich','msgpack','qemu','redis'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import sheesh.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('sheesh')))\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, check=True).stdout
    assert "sheesh.client" in out and "sheesh.api" not in out


def test_stdin_from_a_thread_does_not_block_output(client: Sheesh) -> None:
    """A large stdin and a program that writes as much as it reads: both directions move at once."""
    with client.vms.create(mem_mb=128) as vm:
        data = os.urandom(3 * 1024 * 1024)
        out = bytearray()
        result = vm.exec_stream("cat", stdin=data, on_stdout=out.extend)
        assert result.ok and bytes(out) == data
