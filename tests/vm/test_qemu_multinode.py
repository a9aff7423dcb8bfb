"""Several hosts on real QEMU: two ``sheesh node`` processes, each in its own network namespace (its own bridge,
taps and nftables, a veth pair to the host), and a ``sheesh serve`` control plane on the host whose embedded node
is drained. VMs land on both nodes; exec and the /serial console work on each; draining sends new VMs to the
other node; a killed node agent makes its node and VMs UNREACHABLE and its restart brings them back RUNNING; a
control-plane restart loses nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets

from sheesh.image.builder import BuiltImage
from tests.server import NodeProcess, ServerProcess, running_nodes, running_server, wait_for
from tests.server import nodes_by_name as nodes

pytestmark = pytest.mark.vm
VM = {"cpu": 1, "memMb": 256, "allowIps": []}


@dataclass
class Host:
    """A network namespace standing in for a machine: ``ns_ip`` inside, ``host_ip`` on the host's veth end."""

    ns: str
    host_if: str
    host_ip: str
    ns_ip: str
    ns_if: str


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    made: list[Host] = []
    tag = os.getpid() % 10000
    try:
        for i in (1, 2):
            net = f"10.252.{(os.getpid() % 60) * 4 + i}"
            host = Host(f"shmn{tag}n{i}", f"shmh{tag}n{i}", f"{net}.1", f"{net}.2", f"shmv{tag}n{i}")
            _sh("ip", "netns", "add", host.ns)
            made.append(host)
            _sh("ip", "link", "add", host.host_if, "type", "veth", "peer", "name", host.ns_if, "netns", host.ns)
            _sh("ip", "addr", "add", f"{host.host_ip}/24", "dev", host.host_if)
            _sh("ip", "link", "set", host.host_if, "up")
            for cmd in (
                ["ip", "addr", "add", f"{host.ns_ip}/24", "dev", host.ns_if],
                ["ip", "link", "set", host.ns_if, "up"],
                ["ip", "link", "set", "lo", "up"],
                ["ip", "route", "add", "default", "via", host.host_ip],
            ):
                _sh("ip", "netns", "exec", host.ns, *cmd)
        yield made
    finally:
        for host in made:
            subprocess.run(["ip", "link", "del", host.host_if], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, check=False)


async def _serial(url: str, marker: bytes) -> bytes:
    async with websockets.connect(url) as ws:
        await ws.send("\n")
        await ws.send("echo sum=$((6*7)) host=$(hostname -I)\n")
        seen, deadline = b"", time.monotonic() + 60
        while marker not in seen:
            msg = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
            seen += msg if isinstance(msg, bytes) else msg.encode()
        return seen


@pytest.fixture
def cluster(
    tmp_path: Path, guest_image: BuiltImage, hosts: list[Host]
) -> Iterator[tuple[ServerProcess, dict[str, NodeProcess]]]:
    image_dir = guest_image.path.parent.parent
    guest_network = f"10.{60 + os.getpid() % 100}.0.0/16"
    env = {"SHEESH_HOST": "0.0.0.0", "SHEESH_NETWORK": "off", "SHEESH_NODE_TIMEOUT_S": "3"}
    with running_server(tmp_path / "control", image_dir, SHEESH_GUEST_NETWORK=guest_network, **env) as srv:
        with srv.client() as c:
            assert c.post("/v1/nodes/local/drain").status_code == 200
            tokens = {name: c.post("/v1/nodes", json={"name": name}).json()["token"] for name in ("n1", "n2")}
        procs: dict[str, NodeProcess] = {}
        for (name, token), host in zip(tokens.items(), hosts, strict=True):
            procs[name] = NodeProcess(
                tmp_path / name,
                image_dir,
                control_url=f"http://{host.host_ip}:{srv.port}",
                name=name,
                token=token,
                netns=host.ns,
                SHEESH_HOST=host.ns_ip,
                SHEESH_NETWORK="on",
                SHEESH_BRIDGE="shmnbr0",
                SHEESH_GUEST_NETWORK=guest_network,
                SHEESH_NET_UPLINKS=f'["{host.ns_if}"]',
            )
        with running_nodes(procs.values()):
            yield srv, procs


def test_two_nodes_in_their_own_namespaces(cluster: tuple[ServerProcess, dict[str, NodeProcess]]) -> None:
    srv, procs = cluster
    with srv.client() as c:
        wait_for("both nodes to report", lambda: all(nodes(c)[n]["state"] == "READY" for n in procs), 30)
        assert {nodes(c)[n]["address"] for n in procs} == {p.env["SHEESH_HOST"] for p in procs.values()}
        first = c.post("/v1/vms", json=VM)
        assert first.status_code == 201, first.text
        second = c.post("/v1/vms", json=VM)
        assert second.status_code == 201, second.text
        vms = [first.json(), second.json()]
        assert sorted(v["node"] for v in vms) == ["n1", "n2"]
        for vm in vms:
            proc = procs[vm["node"]]
            assert (vm["nodeHost"], vm["nodePort"]) == (proc.env["SHEESH_HOST"], proc.port)
            r = c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "ip -4 -o addr show eth0 | grep -c inet"})
            assert r.status_code == 200 and r.json()["stdout"] == "1\n", r.text
            grant = c.get(f"/v1/vms/{vm['id']}/agentToken").json()
            assert grant["url"] == f"ws://{proc.env['SHEESH_HOST']}:{proc.port}"
            marker = f"sum=42 host={vm['guestIp']}".encode()
            assert marker in asyncio.run(_serial(f"{grant['url']}/serial?token={grant['token']}", marker))

        assert c.post("/v1/nodes/n1/drain").json()["state"] == "DRAINING"
        third = c.post("/v1/vms", json=VM).json()
        assert third["node"] == "n2"
        assert c.delete(f"/v1/vms/{third['id']}").status_code == 204
        assert c.post("/v1/nodes/n1/undrain").json()["state"] == "READY"

        on_n2 = next(v["id"] for v in vms if v["node"] == "n2")
        procs["n2"].kill()
        wait_for("n2 to be UNREACHABLE", lambda: nodes(c)["n2"]["state"] == "UNREACHABLE", 30)
        assert c.get(f"/v1/vms/{on_n2}").json()["state"] == "UNREACHABLE"
        r = c.post(f"/v1/vms/{on_n2}/exec", json={"cmd": "true"})
        assert r.status_code == 503 and "n2" in r.json()["message"]
        procs["n2"].start()
        wait_for("n2 and its VM to return", lambda: c.get(f"/v1/vms/{on_n2}").json()["state"] == "RUNNING", 60)
        r = c.post(f"/v1/vms/{on_n2}/exec", json={"cmd": "echo survived"})
        assert r.status_code == 200 and r.json()["stdout"] == "survived\n"

    srv.stop()
    srv.start()
    with srv.client() as c:
        assert {v["id"]: v["state"] for v in c.get("/v1/vms").json()} == {v["id"]: "RUNNING" for v in vms}
        for vm in vms:
            assert c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).status_code == 200
            assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204
