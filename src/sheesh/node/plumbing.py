"""A node's network plumbing for its VMs: taps on the bridge and one nftables ruleset for all VMs.

Every change re-applies the whole ruleset (one nft transaction), serialized, with the list of VMs read under
the lock, so the last ruleset applied always reflects the latest state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

from sheesh.node.contract import NodeVmSpec, VmNet
from sheesh.node.errors import NodeError
from sheesh.node.network import HostNetwork

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GuestNet:
    """A guest's interface settings: static address, gateway, MAC, name servers."""

    ip: str
    prefix: int
    gateway: str
    mac: str
    dns: tuple[str, ...] = ()


class Plumbing:
    """Taps and rules of the VMs on one node's network (``network`` None: the node has no networking)."""

    def __init__(self, network: HostNetwork | None) -> None:
        self.network = network
        self._nets: dict[str, VmNet] = {}
        """VMs whose taps and rules are in place."""
        self._lock = asyncio.Lock()

    def wired(self, spec: NodeVmSpec, has_nic: bool) -> VmNet | None:
        """The VM's network settings if it is on the node's network (networking on, a NIC in its machine)."""
        if self.network is None or spec.net is None or not has_nic:
            return None
        return spec.net

    def guest_net(self, spec: NodeVmSpec) -> GuestNet | None:
        """What the guest must configure on its NIC (None: the node has no networking for it)."""
        if self.network is None or spec.net is None:
            return None
        config = self.network.config
        gateway = config.gateway
        return GuestNet(
            ip=spec.net.ip,
            prefix=gateway.network.prefixlen,
            gateway=str(gateway.ip),
            mac=spec.net.mac,
            dns=config.dns,
        )

    def plugged(self, vm_id: str) -> VmNet | None:
        return self._nets.get(vm_id)

    async def plug(self, net: VmNet) -> None:
        """The VM's tap and its rules, before its machine starts."""
        assert self.network is not None
        await self._wire(net, self.network.add_tap(net))

    async def plug_spare(self, net: VmNet) -> None:
        """A warm spare's tap, off the bridge and without rules (see ``claim``)."""
        assert self.network is not None
        await self.network.add_tap(net, bridged=False)

    async def claim(self, spare: VmNet, net: VmNet) -> None:
        """The spare's tap becomes the VM's, on the bridge with the VM's rules."""
        assert self.network is not None
        await self._wire(net, self.network.claim_tap(spare, net))

    async def _wire(self, net: VmNet, tap: Awaitable[None]) -> None:
        """Make the VM's tap (``tap``) while the ruleset with its rules is applied; on failure its rules go."""
        try:
            self._nets[net.vm_id] = net
            await asyncio.gather(tap, self.apply())
        except NodeError:
            self._nets.pop(net.vm_id, None)
            raise

    async def unplug(self, vm_id: str, net: VmNet | None) -> None:
        if self.network is None or net is None:
            return
        if self._nets.pop(vm_id, None) is not None:
            await self.apply()
        await self.network.remove_tap(net)

    async def update(self, net: VmNet) -> None:
        """New traffic policy for a VM; applied at once if its tap is up."""
        if self.network is not None and net.vm_id in self._nets:
            self._nets[net.vm_id] = net
            await self.apply()

    async def adopt(self, nets: Iterable[VmNet]) -> None:
        """Put back the taps of VMs an earlier node process left running, then apply one ruleset with all of
        them (no VM's rules go missing while others are adopted; rules of VMs that died are dropped)."""
        if self.network is None:
            return
        for net in nets:
            await self.network.add_tap(net)
            self._nets[net.vm_id] = net
        await self.apply()

    async def apply(self) -> None:
        assert self.network is not None
        async with self._lock:
            await self.network.apply(list(self._nets.values()))

    async def ensure(self) -> bool:
        """Put the VMs' rules back if something outside sheesh removed its tables (a host firewall reload
        that flushes the whole ruleset); True if it had to."""
        if self.network is None or not self._nets or await self.network.intact():
            return False
        log.warning("sheesh's nftables tables were removed outside sheesh; restoring %d VMs' rules", len(self._nets))
        await self.apply()
        return True
