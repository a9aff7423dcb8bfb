"""The fields of a VM handle (sync and async alike): read from the last report of the API (``info``)."""

from __future__ import annotations

from datetime import datetime

from sheesh.client.types import PortForward, VmInfo


class VmFields:
    """``vm.id``, ``vm.state``, ... as the API last reported them (``refresh()`` asks again)."""

    info: VmInfo

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> str:
        return self.info.state

    @property
    def cpu(self) -> int:
        return self.info.cpu

    @property
    def mem_mb(self) -> int:
        return self.info.mem_mb

    @property
    def guest_ip(self) -> str:
        return self.info.guest_ip

    @property
    def created_at(self) -> datetime:
        return self.info.created_at

    @property
    def node(self) -> str:
        return self.info.node

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def error(self) -> str | None:
        return self.info.error

    @property
    def ports(self) -> list[PortForward]:
        return self.info.ports

    @property
    def expires_at(self) -> datetime | None:
        return self.info.expires_at

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.state} {self.cpu} vCPU {self.mem_mb} MiB {self.guest_ip}>"
