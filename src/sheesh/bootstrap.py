"""Composition root: wires settings, store, node agent and VMM driver into ``Services``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from starlette.applications import Starlette

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.images import register_builtin
from sheesh.control.services import Services
from sheesh.image.builder import ImageBuilder
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeClient
from sheesh.node.media import MediaService
from sheesh.node.network import HostNetwork, LinuxNetwork, NetConfig, host_nameservers
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


def build_node(settings: Settings, driver: VmmDriver | None = None) -> NodeAgent:
    """The embedded local node on QEMU (or the fake VMM)."""
    drv = driver or (
        FakeDriver()
        if settings.vmm == "fake"
        else QemuDriver(settings.data_dir, accel=settings.accel, ram_dir=settings.resolved_ram_dir())
    )
    return NodeAgent(
        settings.vms_dir,
        drv,
        boot_timeout_s=settings.boot_timeout_s,
        stop_timeout_s=settings.stop_timeout_s,
        name=settings.node_name,
        snapshots_dir=settings.data_dir / "snapshots",
        network=host_network(settings),
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
    return Services.create(settings, store, node)
