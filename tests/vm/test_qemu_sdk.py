"""The SDK and the CLI on real QEMU microVMs: streaming exec (output before the end, stdin, a PTY with resizes,
kill), files, and a VM whose timeout deletes it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheesh.client import NotFoundError, Sheesh, StreamOutput, Vm
from tests.server import ServerProcess

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def client(shared_server: ServerProcess) -> Iterator[Sheesh]:
    with Sheesh(shared_server.url, shared_server.api_key, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def vm(client: Sheesh) -> Iterator[Vm]:
    with client.vms.create(cpu=1, mem_mb=256, allow_ips=["172.16.0.1/32"]) as vm:
        yield vm


def test_output_streams_before_the_command_ends(vm: Vm) -> None:
    arrived: list[tuple[float, bytes]] = []
    start = time.monotonic()
    result = vm.exec_stream(
        "echo first; sleep 3; echo second", on_stdout=lambda b: arrived.append((time.monotonic() - start, b))
    )
    total = time.monotonic() - start
    assert result.ok and b"".join(b for _, b in arrived) == b"first\nsecond\n"
    assert arrived[0][1] == b"first\n" and arrived[0][0] < total - 2.0, (arrived, total)


def test_stdin_round_trip_through_cat_bytes_unchanged(vm: Vm) -> None:
    data = bytes(range(256)) * 64 + os.urandom(64 * 1024)
    out = bytearray()
    assert vm.exec_stream("cat", stdin=data, on_stdout=out.extend).ok
    assert bytes(out) == data


def test_a_pty_is_a_tty_and_honours_resize(vm: Vm) -> None:
    with vm.pty("tty; stty size; read line; stty size", rows=27, cols=91) as term:
        seen = bytearray()
        events = iter(term)
        while b"27 91" not in seen:
            event = next(events)
            assert isinstance(event, StreamOutput)
            seen.extend(event.data)
        assert b"/dev/pts/" in seen, seen
        term.resize(52, 170)
        term.send(b"\r")
        rest = b"".join(e.data for e in events if isinstance(e, StreamOutput))
        assert b"52 170" in rest and term.result is not None and term.result.exit_code == 0


def test_kill_ends_a_sleep(vm: Vm) -> None:
    with vm.open_stream("sleep 600") as session:
        start = time.monotonic()
        session.kill()
        assert session.wait().exit_code == 137
        assert time.monotonic() - start < 15
    assert vm.exec("pgrep -x sleep || echo none").stdout == "none\n"


def test_files_round_trip(vm: Vm, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('ran in the VM')\n")
    vm.files.upload(tmp_path / "src", "/workspace/src")
    assert vm.exec("python3 src/main.py > src/out.txt && cat src/out.txt").stdout == "ran in the VM\n"
    vm.files.download("/workspace/src", tmp_path / "back")
    assert (tmp_path / "back" / "out.txt").read_text() == "ran in the VM\n"


def test_the_cli_streams_and_passes_the_exit_status(shared_server: ServerProcess, vm: Vm) -> None:
    env = {**os.environ, "SHEESH_URL": shared_server.url, "SHEESH_API_KEY": shared_server.api_key}
    cli = [sys.executable, "-c", "from sheesh.cli.main import main; main()"]
    done = subprocess.run(
        [*cli, "vm", "exec", vm.id, "--", "id -u; cat; exit 9"],
        input=b"via stdin\n",
        env=env,
        capture_output=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (9, b"1000\nvia stdin\n"), done.stderr


def test_a_vm_with_a_timeout_disappears(client: Sheesh) -> None:
    vm = client.vms.create(cpu=1, mem_mb=256, timeout_s=5)
    assert vm.expires_at is not None
    deadline = time.monotonic() + 60
    while True:
        try:
            client.vms.get(vm.id)
        except NotFoundError:
            break
        assert time.monotonic() < deadline, "the VM outlived its timeout"
        time.sleep(0.5)
