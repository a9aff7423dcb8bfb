"""Composition root: wires settings, store, node agent and VMM driver into ``Services``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette

from sheesh.api.app import create_app
from sheesh.auth.sessions import SessionSigner
from sheesh.config import Settings
from sheesh.control.images import register_builtin
from sheesh.control.nodes import ConnectFn
from sheesh.control.remote_node import RemoteNode
from sheesh.control.services import Services
from sheesh.errors import InvalidInputError
from sheesh.image.builder import ImageBuilder
from sheesh.models import NodeRecord
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeClient, agent_token_key
from sheesh.node.heartbeat import Heartbeat
from sheesh.node.media import MediaService
from sheesh.node.network import HostNetwork, LinuxNetwork, NetConfig, host_nameservers
from sheesh.node.server import contract_routes
from sheesh.node.ws import create_node_app
from sheesh.store.repo import SqlStore
from sheesh.vmm.driver import VmmDriver
from sheesh.vmm.fake import FakeDriver
from sheesh.vmm.qemu import QemuDriver

log = logging.getLogger(__name__)


def host_network(settings: Settings) -> HostNetwork | None:
    """Linux networking unless switched off; ``auto`` needs root, ip and nft, and a real VMM."""
    if settings.network == "off" or (settings.network == "auto" and settings.vmm == "fake"):
        return None
    dns = tuple(settings.guest_dns) if settings.guest_dns is not None else host_nameservers()
    config = NetConfig(settings.bridge, settings.guest_network, tuple(settings.net_uplinks), dns)
    if settings.network == "auto" and not (os.geteuid() == 0 and LinuxNetwork.available()):
        log.warning("VM networking is off: it needs root and iproute2 + nftables (SHEESH_NETWORK=on to insist)")
        return None
    return LinuxNetwork(config)


@dataclass(frozen=True, kw_only=True)
class Apps:
    """Everything ``sheesh serve`` runs: the services, the control-plane API and the embedded node's
    WebSocket app (port 1337)."""

    services: Services
    api: Starlette
    node: Starlette


def build_apps(settings: Settings, driver: VmmDriver | None = None) -> Apps:
    """The one composition root of ``sheesh serve``: services, the API app and the node app with its media
    service, wired to the same embedded node."""
    node = build_node(settings, driver)
    services = build_services(settings, node)
    blocked = settings.outbound_blocked()
    media = MediaService(node, settings.media_max_bytes, settings.max_disk_size_mb, blocked)
    return Apps(services=services, api=create_app(services), node=create_node_app(node, services.sessions, media))


@dataclass(frozen=True, kw_only=True)
class NodeProcess:
    """What ``sheesh node`` runs: the node agent, its app (the node contract behind the node token, the public
    WebSocket endpoints, metrics) and its heartbeats to the control plane."""

    node: NodeAgent
    app: Starlette
    heartbeat: Heartbeat


def build_node_process(settings: Settings, driver: VmmDriver | None = None) -> NodeProcess:
    """The composition root of ``sheesh node`` (a node agent on its own host). Needs ``control_url`` and
    ``node_token``; on start it adopts the VMs it left running, then reports every ``heartbeat_interval_s``."""
    if not settings.control_url or not settings.node_token:
        raise InvalidInputError("sheesh node needs SHEESH_CONTROL_URL and SHEESH_NODE_TOKEN")
    node = build_node(settings, driver)
    blocked = settings.outbound_blocked()
    media = MediaService(node, settings.media_max_bytes, settings.max_disk_size_mb, blocked)
    heartbeat = Heartbeat(
        control_url=settings.control_url,
        name=settings.node_name,
        token=settings.node_token,
        address=settings.node_host(),
        port=settings.node_port,
        tls=settings.tls_on,
        public_host=settings.node_public_host,
        region=settings.node_region,
        status=node.status,
        interval_s=settings.heartbeat_interval_s,
        verify=ca_context(settings.control_ca),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        adopted = await node.reattach(await node.local_vms())
        log.info("node %s: %d VMs still running", node.name, len(adopted))
        task = asyncio.create_task(heartbeat.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await node.close()

    app = create_node_app(
        node,
        SessionSigner(agent_token_key(settings.node_token)),
        media,
        extra_routes=contract_routes(node, settings.node_token),
        lifespan=lifespan,
    )
    return NodeProcess(node=node, app=app, heartbeat=heartbeat)


def ca_context(ca: Path | None) -> ssl.SSLContext | bool:
    """How a client checks a server's certificate: against the PEM bundle ``ca`` when set (``SHEESH_CONTROL_CA``
    on a node, ``SHEESH_NODE_CA`` on the control plane), else the system's trust store."""
    return True if ca is None else ssl.create_default_context(cafile=str(ca))


def connect_remote(settings: Settings) -> ConnectFn:
    """How the control plane makes the client of a remote node from its record (a node on TLS is checked
    against ``node_ca``, read when its client is made, else the system's trust store)."""

    def connect(rec: NodeRecord) -> NodeClient:
        scheme = "https" if rec.tls else "http"
        url = f"{scheme}://{rec.address}:{rec.port}"
        return RemoteNode(rec.id, url, rec.token, verify=ca_context(settings.node_ca))

    return connect


def build_node(settings: Settings, driver: VmmDriver | None = None) -> NodeAgent:
    """The embedded local node on QEMU (or the fake VMM)."""
    drv = driver or (
        FakeDriver()
        if settings.vmm == "fake"
        else QemuDriver(
            settings.data_dir,
            accel=settings.accel,
            ram_dir=settings.resolved_ram_dir(),
            tcg_tb_mb=settings.tcg_tb_mb,
            tcg_guest_aslr=settings.tcg_guest_aslr,
        )
    )
    return NodeAgent(
        settings.vms_dir,
        drv,
        boot_timeout_s=settings.boot_timeout_s,
        stop_timeout_s=settings.stop_timeout_s,
        name=settings.node_name,
        snapshots_dir=settings.data_dir / "snapshots",
        network=host_network(settings),
        warm_spares=settings.warm_spares,
    )


def build_services(settings: Settings, node: NodeClient | None = None) -> Services:
    """Production wiring: SQL store, the node (default: the embedded local one), built-in image registered
    if built."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.resolved_database_url())
    node = node or build_node(settings)
    built = ImageBuilder(settings.resolved_image_dir()).cached()
    if built is not None:
        register_builtin(store, built)
    wake = node.guests.wake if isinstance(node, NodeAgent) else None
    return Services.create(settings, store, node, connect_remote(settings), wake_guest=wake)
