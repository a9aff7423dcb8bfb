"""``sheesh vm ...``: VMs through the API (the SDK), for humans (tables) and scripts (``--json``)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from sheesh.cli.remote import JsonOption, api, err, out, show

app = typer.Typer(help="VMs (through the API: SHEESH_URL / SHEESH_API_KEY or `sheesh login`)", no_args_is_help=True)
VM_COLUMNS = ("id", "state", "cpu", "mem_mb", "guest_ip", "node", "kind", "created_at", "expires_at")
VmIds = Annotated[list[str], typer.Argument(help="VM ids")]


def _each(vm_ids: list[str], action: str) -> None:
    with api() as client:
        for vm_id in vm_ids:
            getattr(client.vms.get(vm_id), action)()
            err.print(f"{vm_id}: {action}")


@app.command("ls")
def ls(as_json: JsonOption = False) -> None:
    """List VMs."""
    with api() as client:
        show([vm.info for vm in client.vms.list()], VM_COLUMNS, as_json)


@app.command("create")
def create(
    *,
    cpu: Annotated[int, typer.Option(help="vCPUs (1-8)")] = 1,
    mem: Annotated[int, typer.Option("--mem", help="Memory in MiB (128-8192)")] = 256,
    allow_ip: Annotated[list[str] | None, typer.Option("--allow-ip", help="Outbound allowlist CIDR (repeat)")] = None,
    outbound: Annotated[bool, typer.Option("--outbound-internet", help="Allow all outbound internet")] = False,
    image: Annotated[str | None, typer.Option(help="Image id")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Restore this snapshot")] = None,
    disk: Annotated[int | None, typer.Option("--disk", help="Disk size in MiB")] = None,
    kind: Annotated[str, typer.Option(help="sandbox or full")] = "sandbox",
    timeout: Annotated[int | None, typer.Option("--timeout", help="Delete (or pause) after this many seconds")] = None,
    on_timeout: Annotated[str, typer.Option(help="delete or pause")] = "delete",
    as_json: JsonOption = False,
) -> None:
    """Create and boot a VM; prints it (its id first)."""
    with api() as client:
        vm = client.vms.create(
            cpu=cpu,
            mem_mb=mem,
            allow_ips=allow_ip or [],
            outbound_internet=outbound,
            image_id=image,
            snapshot_id=snapshot,
            disk_size_mb=disk,
            kind=kind,
            timeout_s=timeout,
            on_timeout=on_timeout,
        )
        show(vm.info, VM_COLUMNS, as_json)


@app.command("rm")
def rm(vm_ids: VmIds) -> None:
    """Delete VMs (machine, network, storage)."""
    _each(vm_ids, "delete")


@app.command("start")
def start(vm_ids: VmIds) -> None:
    """Boot stopped VMs."""
    _each(vm_ids, "start")


@app.command("stop")
def stop(vm_ids: VmIds) -> None:
    """ACPI shutdown."""
    _each(vm_ids, "stop")


@app.command("pause")
def pause(vm_ids: VmIds) -> None:
    _each(vm_ids, "pause")


@app.command("resume")
def resume(vm_ids: VmIds) -> None:
    _each(vm_ids, "resume")


@app.command("fork")
def fork(
    vm_id: str,
    count: Annotated[int, typer.Option("-n", "--count", help="Clones to make (1-16)")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Clone a running VM into N new ones."""
    with api() as client:
        show([c.info for c in client.vms.get(vm_id).fork(count)], VM_COLUMNS, as_json)


@app.command("timeout")
def timeout(
    vm_id: str,
    seconds: Annotated[int | None, typer.Argument(help="From now; leave out to clear")] = None,
    on_timeout: Annotated[str | None, typer.Option(help="delete or pause")] = None,
    as_json: JsonOption = False,
) -> None:
    """Set or clear a VM's timeout."""
    with api() as client:
        show(client.vms.get(vm_id).set_timeout(seconds, on_timeout).info, VM_COLUMNS, as_json)


@app.command("logs")
def logs(
    vm_id: str,
    tail: Annotated[int, typer.Option(help="Lines (max 1000)")] = 100,
    log_type: Annotated[str, typer.Option("--type", help="firecracker.log (serial), ...stdout.log, ...stderr.log")] = (
        "firecracker.log"
    ),
) -> None:
    """The tail of a VM's serial console (or VMM logs)."""
    with api() as client:
        for line in client.vms.get(vm_id).logs(log_type, tail):
            print(line)


def _split_env(pairs: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    vm_id: str,
    cmd: Annotated[list[str], typer.Argument(help="The command (after --), run by bash -lc")],
    cwd: Annotated[str | None, typer.Option(help="Working directory under /workspace")] = None,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="KEY=VALUE (repeat)")] = None,
    timeout_ms: Annotated[int | None, typer.Option(help="Kill the command after this")] = None,
) -> None:
    """Run a command, streaming its output; this command's exit status is the command's. One argument is a shell
    command line (``-- 'make && ./run'``), several are quoted as words (``-- ls -la "my file"``). Standard input
    is passed on when it is not a terminal (``echo hi | sheesh vm exec ID -- cat``)."""
    stdin = None if sys.stdin.isatty() else sys.stdin.buffer
    words = cmd[1:] if cmd[:1] == ["--"] else cmd
    if not words:
        raise typer.BadParameter("no command", param_hint="CMD")
    with api() as client:
        vm = client.vms.get(vm_id)
        result = vm.exec_stream(
            words[0] if len(words) == 1 else shlex.join(words),
            on_stdout=_writer(sys.stdout.buffer),
            on_stderr=_writer(sys.stderr.buffer),
            stdin=stdin,
            cwd=cwd,
            env=_split_env(env),
            timeout_ms=timeout_ms,
        )
    if result.timed_out:
        err.print("[yellow]timed out[/yellow]")
    if result.truncated:
        err.print("[yellow]output truncated[/yellow]")
    raise typer.Exit(result.exit_code)


def _writer(stream: IO[bytes]) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


@app.command("shell")
def shell(
    vm_id: str,
    cmd: Annotated[str, typer.Option(help="What to run on the terminal")] = "bash -l",
) -> None:
    """An interactive terminal in the VM (its size follows this one; Ctrl-] detaches)."""
    from sheesh.cli.shell import run_shell

    with api() as client:
        code = run_shell(client.vms.get(vm_id), cmd)
    raise typer.Exit(code)


def _remote(spec: str) -> tuple[str, str] | None:
    """``ID:PATH`` as (id, path); None for a local path."""
    head, sep, path = spec.partition(":")
    if sep and head.startswith("vm-") and "/" not in head:
        return head, path or "/workspace"
    return None


@app.command("cp")
def cp(
    src: Annotated[str, typer.Argument(help="LOCAL or ID:PATH")],
    dest: Annotated[str, typer.Argument(help="ID:PATH or LOCAL")],
) -> None:
    """Copy files: ``cp ./dir vm-1:/workspace/dir`` (a file or a folder's contents) or ``cp vm-1:/workspace/out
    ./out`` (a folder of the VM into a local folder)."""
    source, target = _remote(src), _remote(dest)
    if (source is None) == (target is None):
        raise typer.BadParameter("one side must be ID:PATH and the other a local path")
    with api() as client, Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar:
        task = bar.add_task("upload" if target else "download", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        if target is not None:
            if not Path(src).exists():
                raise typer.BadParameter(f"{src} does not exist")
            client.vms.get(target[0]).files.upload(src, target[1], progress=progress)
            bar.update(task, total=bar.tasks[0].completed or 1, completed=bar.tasks[0].completed or 1)
        else:
            assert source is not None
            names = client.vms.get(source[0]).files.download(source[1], dest, progress=progress)
            bar.update(task, total=bar.tasks[0].completed or 1)
            out.print(f"{len(names)} entries into {dest}")
