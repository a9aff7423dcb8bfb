"""VM networking without touching the host: the nftables script, names, address pool, the node's use of the
host-network seam (FakeNetwork), the guest's NIC ioctls, and the firewall / ports API on fakes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.ipam import allocate_ip, free_port, template_ip
from sheesh.control.node_client import FakeNodeClient
from sheesh.guest import netif
from sheesh.guest.agent import resolv_conf
from sheesh.guest.execution import RequestError
from sheesh.models import FirewallAction, FirewallRule, PortForward
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeVmSpec, VmNet, from_wire, to_wire
from sheesh.node.network import FakeNetwork, NetConfig, host_nameservers, render_ruleset
from sheesh.vmm.fake import FakeDriver
from tests.fakes import fake_services

KEY = {"X-API-Key": "test-key"}
CFG = NetConfig("shtest0", "10.77.0.0/16")
A = VmNet(
    vm_id="vm-aaa",
    ip="10.77.0.2",
    allow_ips=("10.77.0.1/32", "192.168.5.0/24", "192.168.5.7/32", "fd00::/8"),
    outbound_internet=False,
    firewall=(FirewallRule("10.0.0.0/8", FirewallAction.ACCEPT), FirewallRule("0.0.0.0/0", FirewallAction.REJECT)),
    ports=(PortForward(8000, 20001), PortForward(53, 20002, "udp")),
)


def _spec(vm_id: str, rootfs: Path = Path("r"), **extra: Any) -> NodeVmSpec:
    return NodeVmSpec(
        vm_id=vm_id, cpu=1, mem_mb=256, kernel=Path("k"), initrd=Path("i"), rootfs=rootfs, disk_size_mb=1024, **extra
    )


B = VmNet(vm_id="vm-bbb", ip="10.77.0.3", outbound_internet=True)


def test_names_fit_and_are_unique() -> None:
    assert len(A.tap) <= 15 and A.tap != B.tap and A.tap.startswith("sh")
    assert A.mac == "52:54:0a:4d:00:02" and B.mac == "52:54:0a:4d:00:03"
    assert str(CFG.gateway) == "10.77.0.1/16"
    assert from_wire(VmNet, json.loads(json.dumps(to_wire(A)))) == A


def test_ruleset_encodes_each_policy() -> None:
    text = render_ruleset(CFG, [B, A])
    assert text.startswith("table inet shtest0 {}\ndelete table inet shtest0\n")
    # overlapping allowlist entries merged, IPv6 entries ignored; allowlisted host services reachable
    allow = 'iifname "shtest0" ip saddr 10.77.0.2 ip daddr { 10.77.0.1/32, 192.168.5.0/24 } accept'
    assert text.count(allow) == 2 and "fd00" not in text
    assert 'iifname "shtest0" ip saddr 10.77.0.3 oifname != "shtest0" accept' in text
    assert "ip saddr 10.77.0.2 oifname" not in text, "no internet without outboundInternet"
    assert "elements = { 10.77.0.3 }" in text and 'ip saddr @internet oifname != "shtest0" masquerade' in text
    chain = text[text.index(f"chain in-{A.tap}") :]
    chain = chain[: chain.index("}")]
    assert chain.index("10.0.0.0/8 accept") < chain.index("0.0.0.0/0 meta l4proto tcp reject with tcp reset")
    assert chain.rstrip().endswith("drop")
    assert text.count("fib daddr type local tcp dport 20001 dnat ip to 10.77.0.2:8000") == 2
    assert "udp dport 20002 dnat ip to 10.77.0.2:53" in text
    assert f'iifname "{A.tap}" ether type ip ip saddr != 10.77.0.2 drop' in text
    # the forward chain: replies first, then egress, then the default drops
    forward = text[text.index("chain forward") :]
    assert forward.index("ct state established,related accept") < forward.index(allow) < forward.index("drop")


def test_empty_ruleset_has_no_internet_set() -> None:
    text = render_ruleset(CFG, [])
    assert "set internet" not in text and "@internet" not in text
    assert 'oifname "shtest0" ip saddr 127.0.0.0/8 masquerade' in text  # node-local port-forward clients
    host_input = text[text.index("chain input") : text.index("chain forward")]
    assert host_input.index("ip daddr 127.0.0.0/8 drop") < host_input.index('iifname "shtest0" drop')
    assert 'iifname "shtest0" drop' in text


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is installed by scripts/setup.sh")
def test_ruleset_is_valid_nftables() -> None:
    for vms in ([], [A], [A, B]):
        proc = subprocess.run(
            ["nft", "-c", "-f", "-"], input=render_ruleset(CFG, vms), capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr


def test_pool_reserves_gateway_and_template_address() -> None:
    assert template_ip("10.9.0.0/29") == "10.9.0.6"
    used: set[str] = set()
    for _ in range(4):
        used.add(allocate_ip("10.9.0.0/29", used))
    assert used == {"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"}


def test_free_port_skips_taken_and_busy_ports() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert free_port((port, port + 2), {port + 1}) == port + 2


def test_guest_nic_settings_and_ioctl_structs() -> None:
    nic = netif.NicSettings.parse("10.77.0.2", 16, "10.77.0.1", "52:54:0A:4D:00:02")
    assert nic.mac == "52:54:0a:4d:00:02" and str(nic.address.netmask) == "255.255.0.0"
    hw = netif.ifreq_hwaddr("eth0", nic.mac)
    assert len(hw) == netif.IFREQ_SIZE and hw[:5] == b"eth0\0" and hw[16:24] == b"\x01\x00RT\x0aM\x00\x02"
    addr = netif.ifreq_addr("eth0", nic.address.ip)
    assert addr[16:18] == socket.AF_INET.to_bytes(2, sys.byteorder) and addr[20:24] == bytes([10, 77, 0, 2])
    route = netif.rtentry_default(nic.gateway)
    assert len(route) == netif.RTENTRY_SIZE and route[28:32] == bytes([10, 77, 0, 1])  # rt_gateway's address
    for bad in (
        ("x", 16, "10.77.0.1", nic.mac),
        ("10.77.0.2", 16, "10.77.0.1", "52:54"),
        ("10.77.0.2", "a", "10.77.0.1", nic.mac),
        ("10.77.0.2", 16, "10.78.0.1", nic.mac),
    ):
        with pytest.raises(netif.NetifError):
            netif.NicSettings.parse(*bad)
    with pytest.raises(netif.NetifError):
        netif.ifreq_flags("a-name-far-too-long", 0)


NETIF_PROBE = """
import sys
from sheesh.guest import netif
first = netif.NicSettings.parse("10.77.0.2", 16, "10.77.0.1", "52:54:0a:4d:00:02")
second = netif.NicSettings.parse("10.77.3.9", 16, "10.77.0.1", "52:54:0a:4d:03:09")
import json
print(json.dumps([netif.configure("nic0", first), netif.configure("nic0", second), netif.configure("nic0", second)]))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
def test_guest_nic_configure_in_a_namespace() -> None:
    """The ioctls really set MAC, address and default route (in a throw-away namespace, on a veth end);
    a second call replaces the first address, a third changes nothing."""
    ns = f"sheesh-netif-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inside = ["ip", "netns", "exec", ns]
        subprocess.run([*inside, "ip", "link", "add", "nic0", "type", "veth", "peer", "name", "nic1"], check=True)
        probe = subprocess.run([*inside, sys.executable, "-c", NETIF_PROBE], check=True, capture_output=True, text=True)
        # a fresh link: everything; a new identity on the up link: MAC live, address, route; again: nothing
        assert json.loads(probe.stdout) == [["mac", "address", "up", "route"], ["mac", "address", "route"], []]

        def show(*what: str) -> str:
            return subprocess.run([*inside, "ip", *what], check=True, capture_output=True, text=True).stdout

        link, addrs, routes = show("link", "show", "nic0"), show("-4", "addr", "show", "nic0"), show("route")
        assert "52:54:0a:4d:03:09" in link and ",UP" in link
        assert "10.77.3.9/16" in addrs and "10.77.0.2" not in addrs
        assert "default via 10.77.0.1 dev nic0" in routes
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_guest_dns(tmp_path: Path) -> None:
    assert resolv_conf(["10.0.0.53", "9.9.9.9"]) == "nameserver 10.0.0.53\nnameserver 9.9.9.9\n"
    assert resolv_conf(None) == "" and resolv_conf([]) == ""
    with pytest.raises(RequestError):
        resolv_conf(["not-an-ip"])
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nnameserver ::1\nsearch lan\n")
    assert host_nameservers(conf) == ("10.1.1.1",)
    assert host_nameservers(tmp_path / "missing") == ()


async def test_node_plugs_updates_and_unplugs(tmp_path: Path) -> None:
    network = FakeNetwork(CFG)
    node = NodeAgent(tmp_path / "vms", FakeDriver(), network=network)
    spec = _spec("vm-aaa", net=A)
    (tmp_path / "vms" / "vm-aaa").mkdir(parents=True)
    (tmp_path / "vms" / "vm-aaa" / "disk.qcow2").write_text("{}")
    await node.start(spec)
    try:
        machine = node.machine_spec(spec)
        assert (machine.tap, machine.mac) == (A.tap, A.mac)
        assert network.taps == {A.tap} and network.applied == [A]
        # the fake guest agent is not root: the net op answered without changing the host
        assert from_wire(NodeVmSpec, json.loads((tmp_path / "vms" / "vm-aaa" / "vm.json").read_text())).net == A
        changed = VmNet(vm_id=A.vm_id, ip=A.ip, firewall=(FirewallRule("1.2.3.4/32", FirewallAction.DROP),))
        await node.update_network("vm-aaa", changed)
        assert network.applied == [changed]
        assert node.spec_of("vm-aaa").net == changed
        # a host firewall reload removed sheesh's tables: the next check puts the same rules back
        assert await node.ensure_network() is False
        applied = network.rulesets
        network.removed = True
        assert await node.ensure_network() is True
        assert network.rulesets == applied + 1 and network.applied == [changed] and not network.removed
    finally:
        await node.destroy("vm-aaa")
    assert network.taps == set() and network.applied == []


async def test_reattach_restores_all_rules_in_one_ruleset(tmp_path: Path) -> None:
    """A restarted node adopts its running VMs and applies one ruleset holding all of them (none of them
    is ever left out while the others are adopted); VMs that died are not in it."""
    first = NodeAgent(tmp_path / "vms", FakeDriver(), network=FakeNetwork(CFG))
    nets = {"vm-aaa": A, "vm-bbb": VmNet(vm_id="vm-bbb", ip="10.77.0.3")}
    for vm_id, net in nets.items():
        (tmp_path / "vms" / vm_id).mkdir(parents=True)
        (tmp_path / "vms" / vm_id / "disk.qcow2").write_text("{}")
        await first.start(_spec(vm_id, net=net))
    network = FakeNetwork(CFG)
    second = NodeAgent(tmp_path / "vms", FakeDriver(), network=network)
    try:
        assert await second.reattach(["vm-aaa", "vm-bbb", "vm-gone"]) == {"vm-aaa", "vm-bbb"}
        assert network.rulesets == 1 and sorted(v.vm_id for v in network.applied) == ["vm-aaa", "vm-bbb"]
        assert network.taps == {A.tap, nets["vm-bbb"].tap}
    finally:
        for vm_id in nets:
            await second.destroy(vm_id)
    assert network.applied == [] and network.taps == set()


def test_firewall_and_ports_api(settings: Settings) -> None:
    svc, node = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=KEY).json()["id"]
        r = c.post(f"/v1/vms/{vm}/firewall", headers=KEY)  # empty body: the caller's address, which has no IP here
        assert r.status_code == 400 and "src is required" in r.json()["message"]
        r = c.post(f"/v1/vms/{vm}/firewall", json={"src": "10.1.2.3", "action": "REJECT"}, headers=KEY)
        assert r.status_code == 200 and r.json()["rules"][-1] == {"src": "10.1.2.3/32", "action": "REJECT"}
        for body, fragment in [
            ({"src": "10.0.0.0/33"}, "CIDR"),
            ({"src": "::1/128"}, "IPv4"),
            ({"src": "10.0.0.0/8", "action": "ALLOW"}, "action"),
        ]:
            r = c.post(f"/v1/vms/{vm}/firewall", json=body, headers=KEY)
            assert r.status_code == 400 and fragment in r.json()["message"], r.text
        assert node.networks[vm].firewall[-1] == FirewallRule("10.1.2.3/32", FirewallAction.REJECT)
        assert c.delete(f"/v1/vms/{vm}/firewall", headers=KEY).status_code == 204
        assert c.get(f"/v1/vms/{vm}/firewall", headers=KEY).json()["rules"] == []
        assert node.networks[vm].firewall == ()

        first = c.post(f"/v1/vms/{vm}/ports", json={"guestPort": 22}, headers=KEY)
        assert first.status_code == 201
        second = c.post(f"/v1/vms/{vm}/ports", json={"guestPort": 53, "protocol": "udp"}, headers=KEY).json()
        assert second["hostPort"] != first.json()["hostPort"] and second["protocol"] == "udp"
        assert c.post(f"/v1/vms/{vm}/ports", json={"guestPort": 22}, headers=KEY).status_code == 409
        for body in ({"guestPort": 0}, {"guestPort": 70000}, {"guestPort": 22, "protocol": "icmp"}, {}):
            assert c.post(f"/v1/vms/{vm}/ports", json=body, headers=KEY).status_code == 400
        assert c.get(f"/v1/vms/{vm}", headers=KEY).json()["ports"] == [first.json(), second]
        assert c.delete(f"/v1/vms/{vm}/ports/{second['hostPort']}", headers=KEY).status_code == 204
        assert c.delete(f"/v1/vms/{vm}/ports/{second['hostPort']}", headers=KEY).status_code == 404
        assert [p.guest_port for p in node.networks[vm].ports] == [22]
        assert c.get("/v1/vms/vm-nope/firewall", headers=KEY).status_code == 404


def test_empty_post_lets_the_caller_in(settings: Settings) -> None:
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc), client=("192.0.2.7", 4242)) as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=KEY).json()["id"]
        r = c.post(f"/v1/vms/{vm}/firewall", headers=KEY)
        assert r.status_code == 200 and r.json()["rules"] == [{"src": "192.0.2.7/32", "action": "ACCEPT"}]


def test_limits_on_rules_and_ports(settings: Settings) -> None:
    svc, _ = fake_services(settings)
    with TestClient(create_app(svc)) as c:
        vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}, headers=KEY).json()["id"]
        for i in range(64):
            assert c.post(f"/v1/vms/{vm}/firewall", json={"src": f"10.0.{i}.0/24"}, headers=KEY).status_code == 200
        r = c.post(f"/v1/vms/{vm}/firewall", json={"src": "10.1.0.0/24"}, headers=KEY)
        assert r.status_code == 400 and "at most 64" in r.json()["message"]
        for port in range(1, 17):
            assert c.post(f"/v1/vms/{vm}/ports", json={"guestPort": port}, headers=KEY).status_code == 201
        r = c.post(f"/v1/vms/{vm}/ports", json={"guestPort": 99}, headers=KEY)
        assert r.status_code == 400 and "at most 16" in r.json()["message"]


def test_fake_node_client_gets_the_policy_at_create(settings: Settings) -> None:
    svc, node = fake_services(settings)
    assert isinstance(node, FakeNodeClient)
    with TestClient(create_app(svc)) as c:
        body = {"cpu": 1, "memMb": 256, "allowIps": ["10.0.0.0/8"], "outboundInternet": True}
        vm = c.post("/v1/vms", json=body, headers=KEY).json()
    net = node.specs[vm["id"]].net
    assert net is not None and net.ip == vm["guestIp"] and net.allow_ips == ("10.0.0.0/8",) and net.outbound_internet


async def test_restores_recreate_the_saved_devices(tmp_path: Path) -> None:
    network = FakeNetwork(CFG)
    node = NodeAgent(tmp_path / "vms", FakeDriver(), network=network, snapshots_dir=tmp_path / "snaps")

    def spec(vm_id: str, ip: str, snapshot: str | None = None) -> NodeVmSpec:
        return _spec(vm_id, rootfs=tmp_path / "r", snapshot_id=snapshot, net=VmNet(vm_id=vm_id, ip=ip))

    await node.create(spec("vm-src", "10.77.0.2"))
    try:
        assert node.has_nic("vm-src")
        await node.snapshot("vm-src", "snap-1")
        assert json.loads((tmp_path / "snaps" / "snap-1" / "machine.json").read_text()) == {"nic": True}
        await node.create(spec("vm-clone", "10.77.0.3", "snap-1"))
        assert node.has_nic("vm-clone") and VmNet(vm_id="vm-clone", ip="10.77.0.3").tap in network.taps
        (tmp_path / "snaps" / "snap-1" / "machine.json").unlink()  # a snapshot from before networking
        await node.create(spec("vm-old", "10.77.0.4", "snap-1"))
        assert not node.has_nic("vm-old") and node.machine_spec(node.spec_of("vm-old")).tap is None
        assert VmNet(vm_id="vm-old", ip="10.77.0.4").tap not in network.taps
    finally:
        for vm in ("vm-src", "vm-clone", "vm-old"):
            await node.destroy(vm)
    assert network.taps == set()
