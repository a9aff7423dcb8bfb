"""The asyncio client: ``AsyncSheesh`` and the handles it returns (the same ``_calls``, awaited)."""

from __future__ import annotations

import asyncio
import io
import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sheesh.client import _calls as calls
from sheesh.client._sync import Stdin, stdin_chunks
from sheesh.client._transport import AsyncTransport, Progress
from sheesh.client._vmfields import VmFields
from sheesh.client.archive import pack, unpack
from sheesh.client.config import resolve
from sheesh.client.streaming import AsyncExecSession, first_message, stream_url
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

Output = Callable[[bytes], Any]
"""A callback for output chunks (a coroutine function is awaited)."""


class AsyncVmFiles:
    def __init__(self, vm: AsyncVm) -> None:
        self._vm = vm

    async def upload(
        self, local_path: str | os.PathLike[str], dest: str = "/workspace", *, progress: Progress | None = None
    ) -> None:
        """Copy a local file or folder's contents into ``dest`` in the VM."""
        archive = await asyncio.to_thread(pack, local_path)
        await self._vm._t.send_file(calls.upload(self._vm.id, dest), io.BytesIO(archive), len(archive), progress)

    async def download(
        self, path: str, local_dir: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> list[str]:
        """Copy the folder ``path`` of the VM into ``local_dir``; returns the names extracted."""
        with tempfile.TemporaryFile() as archive:
            await self._vm._t.get_to(f"/v1/vms/{self._vm.id}/files/download", {"path": path}, archive, progress)
            archive.seek(0)
            return await asyncio.to_thread(unpack, archive, local_dir)


class AsyncVm(VmFields):
    """A VM (asyncio). ``async with`` deletes it on exit.

    Example::

        async with await client.vms.create(cpu=1, mem_mb=256) as vm:
            print((await vm.exec("echo hi")).stdout)
    """

    def __init__(self, client: AsyncSheesh, info: VmInfo) -> None:
        self._client = client
        self._t = client._transport
        self.info = info
        self.files = AsyncVmFiles(self)

    async def refresh(self) -> AsyncVm:
        self.info = await self._t.run(calls.get_vm(self.id))
        return self

    async def exec(
        self, cmd: str, *, cwd: str | None = None, env: dict[str, str] | None = None, timeout_ms: int | None = None
    ) -> ExecResult:
        return await self._t.run(calls.exec_vm(self.id, cmd, cwd, env, timeout_ms))

    async def open_stream(
        self,
        cmd: str,
        *,
        pty: bool = False,
        rows: int = 24,
        cols: int = 80,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> AsyncExecSession:
        first = first_message(cmd, cwd=cwd, env=env, timeout_ms=timeout_ms, pty=pty, rows=rows, cols=cols)
        return await AsyncExecSession.open(
            stream_url(self._t.base_url, self.id), self._t.headers, first, self._client.verify, self._t.timeout_s
        )

    async def exec_stream(
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
        """Run ``cmd``, handing its output to the callbacks as it comes; ``stdin`` is sent, then closed."""
        async with await self.open_stream(cmd, cwd=cwd, env=env, timeout_ms=timeout_ms) as session:
            writer = asyncio.create_task(_feed(session, stdin))
            try:
                async for event in session:
                    if isinstance(event, StreamOutput):
                        callback = on_stdout if event.fd == STDOUT else on_stderr
                        if callback is not None and asyncio.iscoroutine(done := callback(event.data)):
                            await done
            finally:
                writer.cancel()
            assert session.result is not None
            return session.result

    async def pty(self, cmd: str = "bash -l", *, rows: int = 24, cols: int = 80, **kwargs: Any) -> AsyncExecSession:
        return await self.open_stream(cmd, pty=True, rows=rows, cols=cols, **kwargs)

    async def run_ts(
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        deno_flags: list[str] | None = None,
        timeout_ms: int | None = None,
    ) -> ScriptResult:
        return await self._t.run(
            calls.run_script(
                self.id, "ts", code=code, path=path, args=args, env=env, deno_flags=deno_flags, timeout_ms=timeout_ms
            )
        )

    async def run_js(
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> ScriptResult:
        return await self._t.run(
            calls.run_script(
                self.id, "js", code=code, path=path, args=args, env=env, deno_flags=None, timeout_ms=timeout_ms
            )
        )

    async def logs(self, log_type: str = "firecracker.log", tail: int = 100) -> list[str]:
        return await self._t.run(calls.vm_logs(self.id, log_type, tail))

    async def exec_logs(self, limit: int = 50, log_type: str = "all") -> list[ExecLog]:
        return await self._t.run(calls.exec_logs(self.id, limit, log_type))

    async def snapshot(self) -> Snapshot:
        return await self._t.run(calls.create_snapshot(self.id))

    async def start(self) -> None:
        await self._t.run(calls.vm_action(self.id, "start"))

    async def stop(self) -> None:
        await self._t.run(calls.vm_action(self.id, "stop"))

    async def pause(self) -> None:
        await self._t.run(calls.vm_action(self.id, "pause"))

    async def resume(self) -> None:
        await self._t.run(calls.vm_action(self.id, "resume"))

    async def fork(self, count: int = 1) -> list[AsyncVm]:
        _, made, _ = await self._t.run(calls.fork_vm(self.id, count))
        return [AsyncVm(self._client, info) for info in made]

    async def set_timeout(self, timeout_s: int | None, on_timeout: str | None = None) -> AsyncVm:
        self.info = await self._t.run(calls.set_timeout(self.id, timeout_s, on_timeout))
        return self

    async def delete(self) -> None:
        await self._t.run(calls.delete_vm(self.id))

    async def __aenter__(self) -> AsyncVm:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.delete()


async def _feed(session: AsyncExecSession, stdin: Stdin | None) -> None:
    try:
        if stdin is not None:
            for chunk in stdin_chunks(stdin):
                await session.send(chunk)
        await session.close_stdin()
    except Exception:  # the command ended (or the stream broke): the reader reports it
        return


class AsyncVms:
    def __init__(self, client: AsyncSheesh) -> None:
        self._client = client

    async def create(
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
    ) -> AsyncVm:
        info = await self._client._transport.run(
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
        return AsyncVm(self._client, info)

    async def list(self) -> list[AsyncVm]:
        return [AsyncVm(self._client, info) for info in await self._client._transport.run(calls.list_vms())]

    async def get(self, vm_id: str) -> AsyncVm:
        return AsyncVm(self._client, await self._client._transport.run(calls.get_vm(vm_id)))


class AsyncSnapshots:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def list(self) -> list[Snapshot]:
        return await self._t.run(calls.list_snapshots())

    async def get(self, snapshot_id: str) -> Snapshot:
        return await self._t.run(calls.get_snapshot(snapshot_id))

    async def delete(self, snapshot_id: str) -> None:
        await self._t.run(calls.delete_snapshot(snapshot_id))


class AsyncImages:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def list(self) -> list[Image]:
        return await self._t.run(calls.list_images())

    async def get(self, image_id: str) -> Image:
        return await self._t.run(calls.get_image(image_id))

    async def create(self, name: str, description: str = "") -> Image:
        return await self._t.run(calls.create_image(name, description))

    async def upload(
        self, image_id: str, part: str, local_path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Image:
        path = Path(local_path)
        with path.open("rb") as fh:
            return await self._t.send_file(calls.upload_image_part(image_id, part), fh, path.stat().st_size, progress)

    async def set_default(self, image_id: str) -> None:
        await self._t.run(calls.set_default_image(image_id))

    async def delete(self, image_id: str) -> None:
        await self._t.run(calls.delete_image(image_id))


class AsyncApiKeys:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def list(self) -> list[ApiKey]:
        return await self._t.run(calls.list_keys())

    async def create(self, label: str = "api", expires_at: str | None = None) -> ApiKey:
        return await self._t.run(calls.create_key(label, expires_at))

    async def delete(self, key_id: str) -> None:
        await self._t.run(calls.delete_key(key_id))


class AsyncUsers:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def me(self) -> User:
        return await self._t.run(calls.me())

    async def list(self) -> list[User]:
        return await self._t.run(calls.list_users())

    async def create(self, username: str, password: str, role: str = "user") -> User:
        return await self._t.run(calls.create_user(username, password, role))

    async def set_role(self, user_id: str, role: str) -> User:
        return await self._t.run(calls.set_role(user_id, role))

    async def delete(self, user_id: str) -> None:
        await self._t.run(calls.delete_user(user_id))


class AsyncSheesh:
    """``Sheesh`` for asyncio (the same arguments and resources, every call awaited).

    Example::

        async with AsyncSheesh() as client:
            vm = await client.vms.create(cpu=1, mem_mb=256)
            print((await vm.exec("uname -a")).stdout)
            await vm.delete()
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
        http: httpx.AsyncClient | None = None,
    ) -> None:
        creds = resolve(base_url, api_key)
        self.base_url = creds.base_url
        self.verify = verify
        if http is None:
            http = httpx.AsyncClient(base_url=creds.base_url, timeout=timeout_s, verify=verify)
        self._transport = AsyncTransport(
            creds, timeout_s=timeout_s, max_retries=max_retries, max_retry_wait_s=max_retry_wait_s, http=http
        )
        self._transport.http.headers.update(self._transport.headers)
        self.vms = AsyncVms(self)
        self.snapshots = AsyncSnapshots(self._transport)
        self.images = AsyncImages(self._transport)
        self.api_keys = AsyncApiKeys(self._transport)
        self.users = AsyncUsers(self._transport)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncSheesh:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
