"""VM networking on real QEMU against a "LAN" the test builds: a network namespace behind a veth pair (the
node's uplink), with two addresses and a TCP service that answers with the caller's address. No traffic
leaves this machine: the namespace is the only outside the VMs can reach."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sheesh.image.builder import BuiltImage
from tests.server import ServerProcess, running_server
from tests.vm.conftest import CONNECT, SERVE, Lan

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def net_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage, lan: Lan) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("net") / "data"
    env = {
        "SHEESH_NETWORK": "on",
        "SHEESH_NET_UPLINKS": f'["{lan.host_if}"]',
        "SHEESH_PORT_FORWARD_RANGE": "[23400, 23499]",
        "SHEESH_GUEST_DNS": f'["{lan.peer_ip}"]',
    }
    with running_server(data, guest_image.path.parent.parent, **env) as srv:
        yield srv


def _vm_connect(c: httpx.Client, vm: str, ip: str, port: int) -> str:
    out = c.post(f"/v1/vms/{vm}/exec", json={"cmd": f"python3 -c '{CONNECT}' {ip} {port}"}).json()
    assert out["exitCode"] == 0, out
    return str(out["stdout"]).strip()


def _vm_serve(c: httpx.Client, vm: str, port: int, text: str) -> None:
    # wait until it listens (a freshly booted guest under TCG can take more than a second to start Python)
    ready = f"for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.1; done"
    cmd = f"setsid python3 -c '{SERVE}' {port} {text} >/dev/null 2>&1 < /dev/null & {ready}"
    assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": cmd}).json()["exitCode"] == 0


def _ruleset(srv: ServerProcess) -> str:
    bridge = srv.env["SHEESH_BRIDGE"]
    return subprocess.run(["nft", "list", "table", "inet", bridge], capture_output=True, text=True, check=False).stdout


def _gateway(srv: ServerProcess) -> str:
    net = srv.env["SHEESH_GUEST_NETWORK"].split("/")[0]
    return net.rsplit(".", 2)[0] + ".0.1"


def test_egress_allowlist_internet_switch_and_isolation(net_server: ServerProcess, lan: Lan) -> None:
    with net_server.client() as c:
        allow = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": [f"{lan.peer_ip}/32"]}).json()
        internet = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": [], "outboundInternet": True}).json()
        ip_addr = c.post(f"/v1/vms/{allow['id']}/exec", json={"cmd": "busybox ip addr show"}).json()["stdout"]
        assert f"inet {allow['guestIp']}/16" in ip_addr
        resolv = c.post(f"/v1/vms/{allow['id']}/exec", json={"cmd": "cat /etc/resolv.conf"}).json()["stdout"]
        assert resolv == f"nameserver {lan.peer_ip}\n"
        # the allowlisted address is reached directly (the LAN sees the VM's own address), others are not
        assert _vm_connect(c, allow["id"], lan.peer_ip, 8080) == f"lan-hello peer={allow['guestIp']}"
        assert _vm_connect(c, allow["id"], lan.other_ip, 8080) == "timeout"
        # outbound internet: anything outside, masqueraded behind the node's uplink address
        assert _vm_connect(c, internet["id"], lan.other_ip, 8080) == f"lan-hello peer={lan.host_ip}"
        # neither reaches the host's own services nor the other VM
        host = subprocess.Popen([sys.executable, "-c", SERVE, "23399", "host-hello"])
        try:
            time.sleep(0.5)
            for vm in (allow, internet):
                assert _vm_connect(c, vm["id"], _gateway(net_server), 23399) == "timeout"
                assert _vm_connect(c, vm["id"], lan.host_ip, 23399) == "timeout"
        finally:
            host.kill()
            host.wait()
        _vm_serve(c, allow["id"], 8000, "vm-hello")
        assert _vm_connect(c, internet["id"], allow["guestIp"], 8000) in ("timeout", "error 113")
        for vm in (allow, internet):
            assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204


def _drop_tables_and_wait(srv: ServerProcess, guest: str) -> None:
    """A host firewall reload that drops sheesh's tables (only those): the service puts them back in seconds."""
    for family in ("inet", "bridge"):
        subprocess.run(["nft", "delete", "table", family, srv.env["SHEESH_BRIDGE"]], check=True)
    deadline = time.monotonic() + 10
    while guest not in _ruleset(srv):
        assert time.monotonic() < deadline, "the rules were not restored"
        time.sleep(0.2)


def test_inbound_firewall_and_port_forwarding(net_server: ServerProcess, lan: Lan) -> None:
    with net_server.client() as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()
        vm_id, guest = vm["id"], vm["guestIp"]
        _vm_serve(c, vm_id, 8000, "vm-hello")
        assert c.get(f"/v1/vms/{vm_id}/firewall").json() == {"vmId": vm_id, "rules": []}
        assert lan.connect(guest, 8000) == "timeout", "default is drop"

        rules = c.post(f"/v1/vms/{vm_id}/firewall", json={"src": f"{lan.peer_ip}/32"}).json()["rules"]
        assert rules == [{"src": f"{lan.peer_ip}/32", "action": "ACCEPT"}]
        assert lan.connect(guest, 8000) == f"vm-hello peer={lan.peer_ip}"
        assert lan.connect(guest, 8000, src=lan.other_ip) == "timeout", "no rule matches: dropped"
        c.post(f"/v1/vms/{vm_id}/firewall", json={"src": f"{lan.other_ip}/32", "action": "REJECT"})
        started = time.monotonic()
        assert lan.connect(guest, 8000, src=lan.other_ip) == "refused"
        assert time.monotonic() - started < 2.5, "REJECT answers at once"
        bad = c.post(f"/v1/vms/{vm_id}/firewall", json={"src": "10.0.0.0/40"})
        assert bad.status_code == 400 and "CIDR" in bad.json()["message"]

        port = c.post(f"/v1/vms/{vm_id}/ports", json={"guestPort": 8000})
        assert port.status_code == 201, port.text
        host_port = port.json()["hostPort"]
        assert 23400 <= host_port <= 23499 and port.json() == {
            "guestPort": 8000,
            "hostPort": host_port,
            "protocol": "tcp",
        }
        assert c.get(f"/v1/vms/{vm_id}").json()["ports"] == [port.json()]
        assert lan.connect(lan.host_ip, host_port) == f"vm-hello peer={lan.peer_ip}"
        assert lan.connect(lan.host_ip, host_port, src=lan.other_ip) == "refused", "the firewall applies"
        # clients on the node itself use localhost; the guest sees them come from its gateway
        local = subprocess.run(
            [sys.executable, "-c", CONNECT, "127.0.0.1", str(host_port)], capture_output=True, text=True, check=True
        )
        assert local.stdout.strip() == f"vm-hello peer={_gateway(net_server)}"

        _drop_tables_and_wait(net_server, guest)
        assert lan.connect(lan.host_ip, host_port, src=lan.other_ip) == "refused", "the firewall is back"
        assert lan.connect(lan.host_ip, host_port) == f"vm-hello peer={lan.peer_ip}"

        # rules survive a restart of the service (VMs keep running) and of the VM
        net_server.stop()
        net_server.start()
        assert lan.connect(lan.host_ip, host_port) == f"vm-hello peer={lan.peer_ip}"
        assert c.post(f"/v1/vms/{vm_id}/stop").status_code == 204
        assert c.post(f"/v1/vms/{vm_id}/start").status_code == 204
        _vm_serve(c, vm_id, 8000, "vm-again")
        assert lan.connect(lan.host_ip, host_port) == f"vm-again peer={lan.peer_ip}"

        assert c.delete(f"/v1/vms/{vm_id}/firewall").status_code == 204
        assert lan.connect(guest, 8000) == "timeout"
        assert c.delete(f"/v1/vms/{vm_id}/ports/{host_port}").status_code == 204
        assert c.delete(f"/v1/vms/{vm_id}/ports/{host_port}").status_code == 404
        assert f"dport {host_port}" not in _ruleset(net_server)

        tap_rules = _ruleset(net_server)
        assert guest in tap_rules
        assert c.delete(f"/v1/vms/{vm_id}").status_code == 204
        assert guest not in _ruleset(net_server), "the VM's rules are gone"
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=False).stdout
        assert not [
            ln
            for ln in links.splitlines()
            if Path(f"/sys/class/net/{ln.split()[0]}/master").exists()
            and Path(f"/sys/class/net/{ln.split()[0]}/master").resolve().name == net_server.env["SHEESH_BRIDGE"]
        ]
