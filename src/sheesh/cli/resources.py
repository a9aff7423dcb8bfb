"""``sheesh snapshot|image|key|user ...`` through the API (the SDK)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from sheesh.cli.remote import JsonOption, api, err, out, show
from sheesh.client import Image, Sheesh

snapshot_app = typer.Typer(help="Snapshots (through the API)", no_args_is_help=True)
key_app = typer.Typer(help="Your API keys (through the API)", no_args_is_help=True)
user_app = typer.Typer(help="Users (admin; through the API)", no_args_is_help=True)
SNAPSHOT_COLUMNS = ("id", "vm_id", "cpu", "mem_mb", "disk_size_mb", "created_at")
IMAGE_COLUMNS = ("id", "name", "is_default", "ready", "rootfs_size_mb", "created_at")
KEY_COLUMNS = ("id", "label", "sha256", "created_at", "expires_at")
USER_COLUMNS = ("id", "username", "role", "totp_enabled", "created_at")


@snapshot_app.command("ls")
def snapshot_ls(as_json: JsonOption = False) -> None:
    with api() as client:
        show(client.snapshots.list(), SNAPSHOT_COLUMNS, as_json)


@snapshot_app.command("create")
def snapshot_create(vm_id: str, as_json: JsonOption = False) -> None:
    """Snapshot a running (or paused) VM: memory, CPU state and disk."""
    with api() as client:
        show(client.vms.get(vm_id).snapshot(), SNAPSHOT_COLUMNS, as_json)


@snapshot_app.command("rm")
def snapshot_rm(snapshot_ids: list[str]) -> None:
    with api() as client:
        for snapshot_id in snapshot_ids:
            client.snapshots.delete(snapshot_id)
            err.print(f"{snapshot_id}: deleted")


def add_image_commands(image_app: typer.Typer) -> None:
    """The API's image commands, beside ``sheesh image build`` (which builds on this host)."""

    @image_app.command("ls")
    def image_ls(as_json: JsonOption = False) -> None:
        with api() as client:
            show(client.images.list(), IMAGE_COLUMNS, as_json)

    @image_app.command("create")
    def image_create(
        name: str,
        description: Annotated[str, typer.Option(help="What it holds")] = "",
        kernel: Annotated[Path | None, typer.Option(help="Upload this vmlinux too")] = None,
        rootfs: Annotated[Path | None, typer.Option(help="Upload this ext4 rootfs too")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Create an image (metadata), and upload its kernel and rootfs when given."""
        with api() as client:
            image = client.images.create(name, description)
            for part, path in (("kernel", kernel), ("rootfs", rootfs)):
                if path is not None:
                    image = _upload(client, image.id, part, path)
            show(image, IMAGE_COLUMNS, as_json)

    @image_app.command("upload")
    def image_upload(
        image_id: str,
        part: Annotated[str, typer.Argument(help="kernel or rootfs")],
        path: Path,
        as_json: JsonOption = False,
    ) -> None:
        """Upload an image's kernel (uncompressed vmlinux) or rootfs (ext4), with a progress bar."""
        with api() as client:
            show(_upload(client, image_id, part, path), IMAGE_COLUMNS, as_json)

    @image_app.command("default")
    def image_default(image_id: str) -> None:
        """Make an image the default of new VMs."""
        with api() as client:
            client.images.set_default(image_id)
        err.print(f"{image_id}: default")

    @image_app.command("rm")
    def image_rm(image_ids: list[str]) -> None:
        with api() as client:
            for image_id in image_ids:
                client.images.delete(image_id)
                err.print(f"{image_id}: deleted")


def _upload(client: Sheesh, image_id: str, part: str, path: Path) -> Image:
    if part not in ("kernel", "rootfs"):
        raise typer.BadParameter("kernel or rootfs", param_hint="part")
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file")
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err) as bar:
        task = bar.add_task(f"{part} {path.name}", total=path.stat().st_size)
        return client.images.upload(
            image_id, part, path, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )


@key_app.command("ls")
def key_ls(as_json: JsonOption = False) -> None:
    with api() as client:
        show(client.api_keys.list(), KEY_COLUMNS, as_json)


@key_app.command("create")
def key_create(
    label: Annotated[str, typer.Option(help="What it is for")] = "cli",
    expires_at: Annotated[str | None, typer.Option(help="ISO 8601 with a time zone")] = None,
    as_json: JsonOption = False,
) -> None:
    """A new API key (printed once: the server keeps only its hash)."""
    with api() as client:
        key = client.api_keys.create(label, expires_at)
        if as_json:
            show(key, (), as_json)
        else:
            out.print(key.key)
            err.print(f"key {key.id} ({label}): store it now, it is not shown again")


@key_app.command("rm")
def key_rm(key_ids: list[str]) -> None:
    with api() as client:
        for key_id in key_ids:
            client.api_keys.delete(key_id)
            err.print(f"{key_id}: deleted")


@user_app.command("ls")
def user_ls(as_json: JsonOption = False) -> None:
    with api() as client:
        show(client.users.list(), USER_COLUMNS, as_json)


@user_app.command("create")
def user_create(
    username: str,
    role: Annotated[str, typer.Option(help="user or admin")] = "user",
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, envvar="SHEESH_NEW_PASSWORD")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a user (the password is asked for, or taken from SHEESH_NEW_PASSWORD)."""
    with api() as client:
        show(client.users.create(username, password, role), USER_COLUMNS, as_json)


@user_app.command("role")
def user_role(
    user_id: str, role: Annotated[str, typer.Argument(help="user or admin")], as_json: JsonOption = False
) -> None:
    """Make a user an admin, or an admin a user."""
    with api() as client:
        show(client.users.set_role(user_id, role), USER_COLUMNS, as_json)


@user_app.command("rm")
def user_rm(user_ids: list[str]) -> None:
    with api() as client:
        for user_id in user_ids:
            client.users.delete(user_id)
            err.print(f"{user_id}: deleted")
