"""The set of services one control-plane process runs with (built by ``sheesh.bootstrap``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sheesh.auth.apikeys import ApiKeyAuth
from sheesh.auth.hashpool import HashPool
from sheesh.auth.ratelimit import Limiter, RateLimiter, RedisRateLimiter, SharedRateLimiter
from sheesh.auth.sessions import SessionSigner, load_or_create_key
from sheesh.config import Settings
from sheesh.control.accounts import AccountService
from sheesh.control.ci import CiService
from sheesh.control.dumps import DumpService
from sheesh.control.events import EventSender
from sheesh.control.execution import ExecService
from sheesh.control.images import ImageService
from sheesh.control.instances import InstanceService
from sheesh.control.metrics import Metrics
from sheesh.control.nodes import ConnectFn, NodeService
from sheesh.control.templates import Templates
from sheesh.control.vms import VmService
from sheesh.control.vpn import VpnService
from sheesh.control.workspaces import WorkspaceService
from sheesh.node.contract import NodeClient
from sheesh.store.repo import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    node: NodeClient
    vms: VmService
    execs: ExecService
    auth: ApiKeyAuth
    accounts: AccountService
    images: ImageService
    sessions: SessionSigner
    workspaces: WorkspaceService
    instances: InstanceService
    vpn: VpnService
    ci: CiService
    dumps: DumpService
    metrics: Metrics
    nodes: NodeService
    limiter: Limiter = field(default_factory=RateLimiter)
    hashing: HashPool = field(default_factory=HashPool)
    """Password checks run here, off the event loop."""
    wake_guest: Callable[[str], None] = field(default=lambda _: None)
    """Tells a VM's guest that a request for it has arrived (``api.wake``); never waits, never fails. The
    embedded node's ``Guests.wake`` (remote nodes: nothing)."""

    @classmethod
    def create(
        cls,
        settings: Settings,
        store: Store,
        node: NodeClient,
        connect: ConnectFn | None = None,
        wake_guest: Callable[[str], None] | None = None,
    ) -> Services:
        """The services around the embedded ``node``; ``connect`` makes clients of remote nodes; ``wake_guest``:
        the embedded node's hint that a request for a VM's guest is on its way."""
        nodes = NodeService(store, settings, node, connect)
        templates = Templates(store, nodes.client, guest_network=settings.guest_network)
        metrics = Metrics()
        metrics.watch(store, lambda: metrics.nodes)
        vms = VmService(store, nodes, settings, templates, metrics)
        auth = ApiKeyAuth(store, settings.api_key, settings.instance_secret)
        workspaces = WorkspaceService(store, settings)
        vpn = VpnService(store, settings, vms)
        images = ImageService(store, settings)
        events = EventSender(settings.outbound_blocked())
        instances = InstanceService(store, settings, vms, workspaces, events, vpn)
        execs = ExecService(store, settings, vms, metrics)
        ci = CiService(store, settings, vms, execs, workspaces)
        return cls(
            settings,
            store,
            node,
            vms,
            execs,
            auth,
            AccountService(store, auth, settings),
            images,
            SessionSigner(load_or_create_key(settings.data_dir / "session.key")),
            workspaces,
            instances,
            vpn,
            ci,
            DumpService(store, settings, vms, images, auth, instances, ci),
            metrics,
            nodes,
            _limiter(settings, store),
            wake_guest=wake_guest or (lambda _: None),
        )

    async def start(self) -> None:
        """After the VMs are recovered: templates of the configured shapes (built in the background), the default
        workspace type, then instances and the reservation queue, then CI jobs."""
        await self.nodes.sync()
        await self.vms.prebuild_templates()
        self.workspaces.ensure_defaults()
        await self.instances.recover()
        await self.ci.recover()

    async def close(self) -> None:
        await self.instances.close()
        await self.ci.close()
        await self.vms.templates.wait_idle()
        await self.nodes.close()
        await self.node.close()
        self.vms.history.close()
        self.hashing.close()
        self.store.close()


def _limiter(settings: Settings, store: Store) -> Limiter:
    """Redis when ``redis_url`` is set, else the database when it is PostgreSQL (replicas share the budgets),
    else memory."""
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    if settings.shared_rate_limits():
        return SharedRateLimiter(store)
    return RateLimiter()
