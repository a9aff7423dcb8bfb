"""``sheesh`` command line: serve, image build, api keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sheesh.cli.resources import add_image_commands, snapshot_app, user_app
from sheesh.cli.resources import key_app as api_key_app
from sheesh.cli.vm import app as vm_app
from sheesh.errors import SheeshError

if TYPE_CHECKING:
    from sheesh.config import Settings

app = typer.Typer(help="sheesh: self-hosted isolated microVMs", no_args_is_help=True)
image_app = typer.Typer(help="Guest images", no_args_is_help=True)
key_app = typer.Typer(help="API keys in this host's database (see `sheesh key` for the API)", no_args_is_help=True)
web_app = typer.Typer(help="Browser console assets", no_args_is_help=True)
net_app = typer.Typer(help="VM networking on this host", no_args_is_help=True)
tls_app = typer.Typer(help="TLS certificates", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(key_app, name="apikey")
app.add_typer(web_app, name="web")
app.add_typer(net_app, name="network")
app.add_typer(tls_app, name="tls")
node_app = typer.Typer(help="Run a node agent on this host, or add nodes on the control plane's host")
app.add_typer(node_app, name="node")
app.add_typer(vm_app, name="vm")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(api_key_app, name="key")
app.add_typer(user_app, name="user")
add_image_commands(image_app)
console = Console(stderr=True)


def _settings() -> Settings:
    from sheesh.config import Settings

    return Settings()


@app.command()
def serve(
    host: str = typer.Option(None, help="Listen address (default from SHEESH_HOST or 127.0.0.1)"),
    port: int = typer.Option(None, help="Listen port (default from SHEESH_PORT or 3000)"),
) -> None:
    """Run the control plane with an embedded local node agent."""
    import uvicorn

    from sheesh.bootstrap import build_apps
    from sheesh.cli import serving

    settings = _settings()
    if host:
        settings.host = host
    if port:
        settings.port = port
    _configure_logging()
    with _exit_on_error():
        apps = build_apps(settings)
    services = apps.services
    if not any(s.image.is_default for s in services.store.list_images()):
        console.print("[yellow]warning:[/yellow] no guest image yet: run `sheesh image build` to create VMs")
    for line in services.auth.bootstrap():
        console.print(f"[bold green]{line}[/bold green]")
    options = _server_options(settings)
    serving.run(
        [
            uvicorn.Config(apps.api, host=settings.host, port=settings.port, **options),
            uvicorn.Config(apps.node, host=settings.host, port=settings.node_port, **options),
        ]
    )


def _configure_logging() -> None:
    """INFO and up, with times. qemu.qmp logs each failed QMP handshake at ERROR, also those the QEMU driver
    tries again; what fails for good reaches our log as the driver's error, so its own lines stay quiet."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _exit_on_error(what: str = "error") -> Iterator[None]:
    """A ``SheeshError`` inside ends the command: ``what: <its message>`` in red, exit status 1."""
    try:
        yield
    except SheeshError as exc:
        console.print(f"[red]{what}:[/red] {exc.message}")
        raise typer.Exit(1) from exc


def _server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options for ``settings``; exits with the reason when TLS is configured but not usable."""
    from sheesh.cli.serving import server_options

    with _exit_on_error():
        options, cert = server_options(settings)
    if cert is not None:
        console.print(f"TLS: https:// and wss:// with {cert}")
    return options


@node_app.callback(invoke_without_command=True)
def node(ctx: typer.Context) -> None:
    """Run a node agent alone on this host (SHEESH_CONTROL_URL, SHEESH_NODE_NAME, SHEESH_NODE_TOKEN): the node
    contract for the control plane and the public WebSocket endpoints on SHEESH_NODE_PORT (1337)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from sheesh.bootstrap import build_node_process
    from sheesh.cli import serving

    settings = _settings()
    _configure_logging()
    with _exit_on_error():
        process = build_node_process(settings)
    options = _server_options(settings)
    console.print(
        f"node {settings.node_name} on {settings.host}:{settings.node_port}, reporting to {settings.control_url}"
    )
    serving.run([uvicorn.Config(process.app, host=settings.host, port=settings.node_port, **options)])


@node_app.command("add")
def node_add(
    name: str = typer.Argument(..., help="The node's name (its SHEESH_NODE_NAME)"),
    region: str = typer.Option("local", help="Region label"),
) -> None:
    """Record a new node on this control plane and print the settings its `sheesh node` joins with."""
    from sheesh.control.nodes import add_node
    from sheesh.store.repo import SqlStore

    settings = _settings()
    with _exit_on_error():
        store = SqlStore(settings.resolved_database_url())
        try:
            _, token = add_node(store, name, region)
        finally:
            store.close()
    console.print("On the new node's host:")
    console.print(
        f"  SHEESH_NODE_NAME={name} SHEESH_NODE_TOKEN={token} SHEESH_CONTROL_URL=<this API's URL> sheesh node"
    )


@tls_app.command("self-signed")
def tls_self_signed(
    hostname: Annotated[list[str], typer.Option("--host", help="A DNS name or IP address (repeat for more)")],
    out: str = typer.Option(None, "--out", help="Folder for cert.pem and key.pem (default: <data dir>/tls)"),
) -> None:
    """Make a self-signed certificate; `sheesh serve` uses <data dir>/tls with SHEESH_TLS=self-signed."""
    from pathlib import Path

    folder = Path(out) if out else _settings().data_dir / "tls"
    from sheesh.tls import self_signed

    files = self_signed(hostname, folder)
    console.print(f"certificate {files.cert} and key {files.key} for {', '.join(hostname)}")


@app.command("login")
def login(
    url: Annotated[str, typer.Option(prompt="API URL", help="The server, e.g. http://127.0.0.1:3000")],
    api_key: Annotated[str, typer.Option(prompt="API key", hide_input=True, help="An API key of yours")],
) -> None:
    """Check a server URL and API key and save them for later commands (SHEESH_URL/SHEESH_API_KEY win)."""
    from sheesh.client import Sheesh
    from sheesh.client.config import save_config
    from sheesh.client.errors import SheeshClientError

    try:
        with Sheesh(url, api_key) as client:
            me = client.users.me()
    except SheeshClientError as exc:
        console.print(f"[red]login failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    path = save_config(url.rstrip("/"), api_key)
    console.print(f"logged in to {url} as {me.username} ({me.role}); saved in {path}")


@app.command("console")
def console_attach(
    vm_id: str = typer.Argument(..., help="VM id"),
    api_url: str = typer.Option(None, "--api", envvar="SHEESH_URL", help="API base URL (default: this host's)"),
    api_key: str = typer.Option(..., "--api-key", envvar="SHEESH_API_KEY", help="API key"),
    otp: str = typer.Option(None, "--otp", help="One-time passcode, when 2FA is on"),
) -> None:
    """Attach this terminal to a VM's serial console (Ctrl-] detaches)."""
    from sheesh.cli.console import run

    settings = _settings()
    url = api_url or f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"
    with _exit_on_error("console"):
        why = run(url, api_key, vm_id, otp)
    console.print(f"\r\n[dim]console {why}[/dim]")


@image_app.command("build")
def image_build(force: bool = typer.Option(False, help="Rebuild even when cached")) -> None:
    """Build (or reuse) the built-in guest image: Debian kernel, initramfs, rootfs with the guest agent."""
    from sheesh.control.images import register_builtin
    from sheesh.image.builder import ImageBuilder
    from sheesh.store.repo import SqlStore

    settings = _settings()
    builder = ImageBuilder(settings.resolved_image_dir())
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("guest image", total=builder.STEPS)

        def report(message: str, step: int, total: int) -> None:
            progress.update(
                task,
                completed=step - 1 if step < total else step,
                total=total,
                description=f"guest image: {message[:70]}",
            )

        with _exit_on_error("image build failed"):
            built = builder.build(report, force=force)
    with _exit_on_error(f"image built at {built.path} but not registered"):
        store = SqlStore(settings.resolved_database_url())
    image = register_builtin(store, built)
    store.close()
    console.print(f"image {image.id} ready at {built.path} (kernel {built.kernel_version})")


@web_app.command("fetch")
def web_fetch() -> None:
    """Fetch the browser consoles' JavaScript (xterm.js, noVNC; pinned npm packages) into the data dir."""
    from sheesh.web.assets import fetch_assets

    dest = _settings().resolved_web_dir()
    fetched = fetch_assets(dest)
    console.print(f"console assets in {dest}: " + (", ".join(fetched) if fetched else "up to date"))


@net_app.command("down")
def network_down() -> None:
    """Remove sheesh's bridge, every VM tap on it and its nftables tables (VMs lose their network)."""
    from sheesh.node.network import NetConfig, teardown

    settings = _settings()
    asyncio.run(teardown(NetConfig(settings.bridge, settings.guest_network)))
    console.print(f"removed bridge {settings.bridge} and its nftables tables")


@key_app.command("create")
def apikey_create(label: str = typer.Option("cli", help="Label for the key")) -> None:
    """Create an API key for the admin and print it (it is stored only as a hash)."""
    from sheesh.auth.apikeys import ApiKeyAuth
    from sheesh.store.repo import SqlStore

    settings = _settings()
    store = SqlStore(settings.resolved_database_url())
    auth = ApiKeyAuth(store, instance_secret=settings.instance_secret)
    for line in auth.bootstrap():
        console.print(line)
    print(auth.create_key(auth.admin().id, label)[1])
    store.close()


def main() -> None:
    try:
        app()
    except SheeshError as exc:  # pragma: no cover - last resort
        console.print(f"[red]error:[/red] {exc.message}")
        sys.exit(1)
