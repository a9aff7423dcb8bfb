"""Waking a VM's guest as a request for it arrives (``api.wake``, ``Guests.wake``, the agent's ``wake`` op)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.guest import protocol
from sheesh.node.guests import WARM_S, Guests
from tests.fakes import ADMIN, fake_services

GOOD = {"cpu": 1, "memMb": 256, "allowIps": []}


def _app(settings: Settings, rate_limit: int) -> tuple[TestClient, list[str]]:
    """The API on fakes with ``rate_limit`` requests a minute, and the VMs it woke, in order."""
    settings.global_rate_limit = rate_limit
    svc, _ = fake_services(settings)
    woken: list[str] = []
    svc.wake_guest = woken.append
    return TestClient(create_app(svc)), woken


def test_guest_bound_requests_wake_the_guest_first(settings: Settings) -> None:
    client, woken = _app(settings, 0)
    with client as c:
        vm = c.post("/v1/vms", json=GOOD, headers=ADMIN).json()["id"]
        assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=ADMIN).status_code == 200
        c.post(f"/v1/vms/{vm}/run-ts", json={"code": "1"}, headers=ADMIN)
        c.get(f"/v1/vms/{vm}/files/download", params={"path": "/workspace"}, headers=ADMIN)
        assert woken == [vm, vm, vm]
        woken.clear()
        for path in (f"/v1/vms/{vm}", f"/v1/vms/{vm}/exec-logs", "/v1/vms"):  # the guest has no part in these
            assert c.get(path, headers=ADMIN).status_code == 200
        c.post(f"/v1/vms/{vm}/snapshots", headers=ADMIN)
        assert woken == []


def test_requests_over_the_rate_limit_wake_nothing(settings: Settings) -> None:
    client, woken = _app(settings, 2)
    with client as c:
        codes = [c.post("/v1/vms/vm-x/exec", json={"cmd": "true"}, headers=ADMIN).status_code for _ in range(4)]
    assert codes == [404, 404, 429, 429] and woken == ["vm-x", "vm-x"]


async def test_the_node_sends_wake_only_on_an_open_connection(tmp_path: Path) -> None:
    """``Guests.wake`` writes one ``wake`` frame to a connected agent that has been quiet for ``WARM_S``; to an
    agent that just answered, or a VM it has no connection to, nothing (and it opens none)."""
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    srv.setblocking(False)
    guests = Guests(lambda _: path)
    guests.wake("vm-1")  # no client yet: no connection made
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.05)
        try:
            srv.accept()
            raise AssertionError("wake connected to the agent")
        except BlockingIOError:
            pass
        pinging = asyncio.create_task(guests.client("vm-1").call(protocol.Op.PING, 5))
        conn, _ = await loop.sock_accept(srv)
        conn.setblocking(False)
        decoder = protocol.FrameDecoder()
        (ping,) = decoder.feed(await loop.sock_recv(conn, 65536))
        await loop.sock_sendall(conn, protocol.encode({"id": ping["id"], "ok": True}))
        await pinging
        guests.client("vm-1").heard_at = time.monotonic()  # as the ping's reply did (however slow this host)
        guests.wake("vm-1")  # just heard from: still warm, nothing sent
        await asyncio.sleep(WARM_S)
        guests.wake("vm-1")
        guests.wake("vm-2")  # unknown: nothing
        assert decoder.feed(await loop.sock_recv(conn, 65536)) == [{"op": "wake"}]
        conn.close()
    finally:
        await guests.close()
        srv.close()
