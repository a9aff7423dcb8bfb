"""The synchronous client: ``Sheesh`` and the handles it returns."""

from __future__ import annotations

import io
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from sheesh.client import _calls as calls
from sheesh.client._transport import Progress, SyncTransport
from sheesh.client._vmfields import VmFields
from sheesh.client.archive import pack, unpack
from sheesh.client.config import resolve
from sheesh.client.streaming import ExecSession, first_message, stream_url
from sheesh.client.types import (
    ApiKey,
    ExecLog,
    ExecResult,
    Image,
    ScriptResult,
    Snapshot,
    StreamResult,
    User,
    VmInfo,
)
from sheesh.execstream import STDOUT, StreamOutput

Output = Callable[[bytes], None]
Stdin = bytes | str | IO[bytes] | Iterable[bytes]


def stdin_chunks(stdin: Stdin) -> Iterable[bytes]:
    """What ``exec_stream(stdin=...)`` sends: bytes or text at once, a binary file or an iterable in chunks."""
    if isinstance(stdin, str):
        return [stdin.encode()]
    if isinstance(stdin, bytes):
        return [stdin]
    if hasattr(stdin, "read"):
        return iter(lambda: stdin.read(64 * 1024), b"")
    return stdin


class VmFiles:
    """File transfers of one VM (tar.gz on the wire, packed and unpacked here)."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm

    def upload(
        self, local_path: str | os.PathLike[str], dest: str = "/workspace", *, progress: Progress | None = None
    ) -> None:
        """Copy a local file or folder's contents into ``dest`` (under /workspace) in the VM.

        Example: ``vm.files.upload("./project", "/workspace/project")``
        """
        archive = pack(local_path)
        self._vm._t.send_file(calls.upload(self._vm.id, dest), io.BytesIO(archive), len(archive), progress)

    def download(self, path: str, local_dir: str | os.PathLike[str], *, progress: Progress | None = None) -> list[str]:
        """Copy the folder ``path`` of the VM into ``local_dir``; returns the names extracted.

        Example: ``vm.files.download("/workspace/out", "./out")``
        """
        with tempfile.TemporaryFile() as archive:
            self._vm._t.get_to(f"/v1/vms/{self._vm.id}/files/download", {"path": path}, archive, progress)
            archive.seek(0)
            return unpack(archive, local_dir)


class Vm(VmFields):
    """A VM. A context manager: leaving the ``with`` block deletes it.

    Example::

        with client.vms.create(cpu=1, mem_mb=256) as vm:
            print(vm.exec("echo hi").stdout)
    """

    def __init__(self, client: Sheesh, info: VmInfo) -> None:
        self._client = client
        self._t = client._transport
        self.info = info
        self.files = VmFiles(self)

    def refresh(self) -> Vm:
        self.info = self._t.run(calls.get_vm(self.id))
        return self

    def exec(
        self, cmd: str, *, cwd: str | None = None, env: dict[str, str] | None = None, timeout_ms: int | None = None
    ) -> ExecResult:
        """Run ``cmd`` (``bash -lc``, as uid 1000 in /workspace) and wait for it.

        Example: ``vm.exec("ls -la").stdout``
        """
        return self._t.run(calls.exec_vm(self.id, cmd, cwd, env, timeout_ms))

    def open_stream(
        self,
        cmd: str,
        *,
        pty: bool = False,
        rows: int = 24,
        cols: int = 80,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> ExecSession:
        """Start ``cmd`` as a streaming session (see ``ExecSession``)."""
        first = first_message(cmd, cwd=cwd, env=env, timeout_ms=timeout_ms, pty=pty, rows=rows, cols=cols)
        return ExecSession.open(
            stream_url(self._t.base_url, self.id), self._t.headers, first, self._client.verify, self._t.timeout_s
        )

    def exec_stream(
        self,
        cmd: str,
        *,
        on_stdout: Output | None = None,
        on_stderr: Output | None = None,
        stdin: Stdin | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> StreamResult:
        """Run ``cmd``, handing its output to the callbacks as it comes (bytes, unchanged); ``stdin`` is sent
        (then closed) while it runs.

        Example: ``vm.exec_stream("make", on_stdout=sys.stdout.buffer.write)``
        """
        with self.open_stream(cmd, cwd=cwd, env=env, timeout_ms=timeout_ms) as session:
            writer = threading.Thread(target=_feed, args=(session, stdin), daemon=True)
            writer.start()
            for event in session:
                if isinstance(event, StreamOutput):
                    callback = on_stdout if event.fd == STDOUT else on_stderr
                    if callback is not None:
                        callback(event.data)
            writer.join(5)
            assert session.result is not None
            return session.result

    def pty(self, cmd: str = "bash -l", *, rows: int = 24, cols: int = 80, **kwargs: Any) -> ExecSession:
        """An interactive terminal session (``cmd`` on a pseudo-terminal of ``rows`` x ``cols``)."""
        return self.open_stream(cmd, pty=True, rows=rows, cols=cols, **kwargs)

    def run_ts(
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        deno_flags: list[str] | None = None,
        timeout_ms: int | None = None,
    ) -> ScriptResult:
        """TypeScript on Deno. Example: ``vm.run_ts("result.set(6 * 7)").result``"""
        return self._t.run(
            calls.run_script(
                self.id, "ts", code=code, path=path, args=args, env=env, deno_flags=deno_flags, timeout_ms=timeout_ms
            )
        )

    def run_js(
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> ScriptResult:
        """JavaScript on Node.js, with the contract of ``run_ts``."""
        return self._t.run(
            calls.run_script(
                self.id, "js", code=code, path=path, args=args, env=env, deno_flags=None, timeout_ms=timeout_ms
            )
        )

    def logs(self, log_type: str = "firecracker.log", tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the serial console (or ``firecracker.stdout.log``/``.stderr.log``)."""
        return self._t.run(calls.vm_logs(self.id, log_type, tail))

    def exec_logs(self, limit: int = 50, log_type: str = "all") -> list[ExecLog]:
        return self._t.run(calls.exec_logs(self.id, limit, log_type))

    def snapshot(self) -> Snapshot:
        return self._t.run(calls.create_snapshot(self.id))

    def start(self) -> None:
        self._t.run(calls.vm_action(self.id, "start"))

    def stop(self) -> None:
        self._t.run(calls.vm_action(self.id, "stop"))

    def pause(self) -> None:
        self._t.run(calls.vm_action(self.id, "pause"))

    def resume(self) -> None:
        self._t.run(calls.vm_action(self.id, "resume"))

    def fork(self, count: int = 1) -> list[Vm]:
        """``count`` clones of this running VM (each with a fresh identity)."""
        _, made, _ = self._t.run(calls.fork_vm(self.id, count))
        return [Vm(self._client, info) for info in made]

    def set_timeout(self, timeout_s: int | None, on_timeout: str | None = None) -> Vm:
        """Delete (``on_timeout="pause"``: pause) the VM ``timeout_s`` seconds from now; None: never."""
        self.info = self._t.run(calls.set_timeout(self.id, timeout_s, on_timeout))
        return self

    def delete(self) -> None:
        self._t.run(calls.delete_vm(self.id))

    def __enter__(self) -> Vm:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.delete()


def _feed(session: ExecSession, stdin: Stdin | None) -> None:
    try:
        if stdin is not None:
            for chunk in stdin_chunks(stdin):
                session.send(chunk)
        session.close_stdin()
    except Exception:  # the command ended (or the stream broke): the reader reports it
        return


class Vms:
    def __init__(self, client: Sheesh) -> None:
        self._client = client

    def create(
        self,
        cpu: int = 1,
        mem_mb: int = 256,
        allow_ips: list[str] | None = None,
        *,
        outbound_internet: bool = False,
        image_id: str | None = None,
        snapshot_id: str | None = None,
        disk_size_mb: int | None = None,
        kind: str = "sandbox",
        timeout_s: int | None = None,
        on_timeout: str = "delete",
    ) -> Vm:
        """Create and boot a VM (from a template snapshot when one fits: fast).

        Example: ``vm = client.vms.create(cpu=1, mem_mb=256, allow_ips=["172.16.0.1/32"], timeout_s=600)``
        """
        info = self._client._transport.run(
            calls.create_vm(
                cpu=cpu,
                mem_mb=mem_mb,
                allow_ips=list(allow_ips or []),
                outbound_internet=outbound_internet,
                image_id=image_id,
                snapshot_id=snapshot_id,
                disk_size_mb=disk_size_mb,
                kind=kind,
                timeout_s=timeout_s,
                on_timeout=on_timeout,
            )
        )
        return Vm(self._client, info)

    def list(self) -> list[Vm]:
        return [Vm(self._client, info) for info in self._client._transport.run(calls.list_vms())]

    def get(self, vm_id: str) -> Vm:
        return Vm(self._client, self._client._transport.run(calls.get_vm(vm_id)))


class Snapshots:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def list(self) -> list[Snapshot]:
        return self._t.run(calls.list_snapshots())

    def get(self, snapshot_id: str) -> Snapshot:
        return self._t.run(calls.get_snapshot(snapshot_id))

    def delete(self, snapshot_id: str) -> None:
        self._t.run(calls.delete_snapshot(snapshot_id))


class Images:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def list(self) -> list[Image]:
        return self._t.run(calls.list_images())

    def get(self, image_id: str) -> Image:
        return self._t.run(calls.get_image(image_id))

    def create(self, name: str, description: str = "") -> Image:
        """Image metadata; then ``upload`` its kernel and rootfs."""
        return self._t.run(calls.create_image(name, description))

    def upload(
        self, image_id: str, part: str, local_path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Image:
        """Upload ``part`` (``kernel``: an uncompressed vmlinux, or ``rootfs``: an ext4 image) from a file."""
        path = Path(local_path)
        with path.open("rb") as fh:
            return self._t.send_file(calls.upload_image_part(image_id, part), fh, path.stat().st_size, progress)

    def set_default(self, image_id: str) -> None:
        self._t.run(calls.set_default_image(image_id))

    def delete(self, image_id: str) -> None:
        self._t.run(calls.delete_image(image_id))


class ApiKeys:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def list(self) -> list[ApiKey]:
        return self._t.run(calls.list_keys())

    def create(self, label: str = "api", expires_at: str | None = None) -> ApiKey:
        """A new key of the caller's (``.key`` is shown only now)."""
        return self._t.run(calls.create_key(label, expires_at))

    def delete(self, key_id: str) -> None:
        self._t.run(calls.delete_key(key_id))


class Users:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def me(self) -> User:
        return self._t.run(calls.me())

    def list(self) -> list[User]:
        return self._t.run(calls.list_users())

    def create(self, username: str, password: str, role: str = "user") -> User:
        return self._t.run(calls.create_user(username, password, role))

    def set_role(self, user_id: str, role: str) -> User:
        return self._t.run(calls.set_role(user_id, role))

    def delete(self, user_id: str) -> None:
        self._t.run(calls.delete_user(user_id))


class Sheesh:
    """A sheesh server. ``base_url`` and ``api_key`` default to ``SHEESH_URL``/``SHEESH_API_KEY``, then to what
    ``sheesh login`` saved. 429 answers are retried after their Retry-After (``max_retries`` times, each wait at
    most ``max_retry_wait_s``); errors raise ``sheesh.client.errors`` classes.

    Example::

        from sheesh.client import Sheesh

        with Sheesh() as client, client.vms.create(cpu=1, mem_mb=256) as vm:
            print(vm.exec("uname -a").stdout)
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        verify: bool | ssl.SSLContext = True,
        http: httpx.Client | None = None,
    ) -> None:
        creds = resolve(base_url, api_key)
        self.base_url = creds.base_url
        self.verify = verify
        if http is None:
            http = httpx.Client(base_url=creds.base_url, timeout=timeout_s, verify=verify)
        self._transport = SyncTransport(
            creds, timeout_s=timeout_s, max_retries=max_retries, max_retry_wait_s=max_retry_wait_s, http=http
        )
        self._transport.http.headers.update(self._transport.headers)
        self.vms = Vms(self)
        self.snapshots = Snapshots(self._transport)
        self.images = Images(self._transport)
        self.api_keys = ApiKeys(self._transport)
        self.users = Users(self._transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Sheesh:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
