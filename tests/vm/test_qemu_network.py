"""VM networking on real QEMU against a "LAN" the test builds: a network namespace behind a veth pair (the
node's uplink), with two addresses and a TCP service that answers with the caller's address. No traffic
leaves this machine: the namespace is the only outside the VMs can reach."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sheesh.image.builder import BuiltImage
from sheesh.node.contract import VmNet
from tests.server import ServerProcess, running_server, stop_process, wait_for
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
        "SHEESH_WARM_SPARES": "1",
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


def _spares(srv: ServerProcess) -> list[str]:
    return sorted(p.name for p in (srv.data_dir / "vms").glob(".spare-*"))


def _tap_exists(vm_id: str) -> bool:
    return Path(f"/sys/class/net/{VmNet(vm_id=vm_id, ip='0.0.0.0').tap}").exists()


def test_a_create_from_a_warm_spare_gets_its_own_identity_network_and_clock(
    net_server: ServerProcess, lan: Lan
) -> None:
    shape = {"cpu": 1, "memMb": 256, "allowIps": [f"{lan.peer_ip}/32"]}
    with net_server.client() as c:
        src = c.post("/v1/vms", json=shape).json()["id"]
        assert c.post(f"/v1/vms/{src}/exec", json={"cmd": "echo kept > /workspace/f"}).json()["exitCode"] == 0
        assert c.post(f"/v1/vms/{src}/run-ts", json={"code": "console.log(1)"}).json()["stdout"] == "1\n"
        wait_for("a warm Deno", lambda: c.post(f"/v1/vms/{src}/exec", json={"cmd": WARM_DENO}).json()["stdout"], 120)
        snap = c.post(f"/v1/vms/{src}/snapshots").json()["id"]
        first = c.post("/v1/vms", json={**shape, "snapshotId": snap})
        assert first.status_code == 201, first.text
        # the first create from the snapshot restores it, then a spare of it is made in the background
        wait_for("a spare", lambda: "ready in" in net_server.log.read_text(), 60)
        [spare] = _spares(net_server)
        assert _tap_exists(spare)
        time.sleep(4)  # the spare waits paused: its guest clock stands still meanwhile

        claimed_at = time.monotonic()
        vm = c.post("/v1/vms", json={**shape, "snapshotId": snap}).json()
        vm_id, guest = vm["id"], vm["guestIp"]
        warm = _spares_deno(c, vm_id, claimed_at)
        assert f"{vm_id}: spare {spare} claimed" in net_server.log.read_text()
        assert not (net_server.data_dir / "vms" / spare).exists() and not _tap_exists(spare)
        assert _tap_exists(vm_id) and guest in _ruleset(net_server)

        def sh(cmd: str, vm: str = vm_id) -> str:
            r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": cmd}).json()
            assert r["exitCode"] == 0, r
            return str(r["stdout"])

        assert sh("cat /workspace/f") == "kept\n"
        assert abs(int(sh("date +%s")) - time.time()) < 2, "the guest clock was not set when it was claimed"
        assert f"inet {guest}/16" in sh("busybox ip addr show")
        assert sh("cat /sys/class/net/eth0/address").strip() == VmNet(vm_id=vm_id, ip=guest).mac
        # its own network: reached from its own address, under its own rules
        assert _vm_connect(c, vm_id, lan.peer_ip, 8080) == f"lan-hello peer={guest}"
        assert _vm_connect(c, vm_id, lan.other_ip, 8080) == "timeout"
        rng = "head -c 16 /dev/urandom | od -An -tx1; cat /proc/sys/kernel/random/boot_id"
        assert len({sh(rng, v) for v in (src, first.json()["id"], vm_id)}) == 3
        # that Deno serves the VM's first run-ts; its random state is its own
        code = "console.log(Deno.pid, crypto.randomUUID(), Math.random())"
        outs = [c.post(f"/v1/vms/{v}/run-ts", json={"code": code}).json()["stdout"] for v in (vm_id, src)]
        assert outs[0].split()[0] == str(warm) and len({o.split(" ", 1)[1] for o in outs}) == 2, outs
        # the VM is the node's like any other: it survives the service's end, even a SIGKILL; the spare made
        # after the claim does not (a new service process destroys what the old one left)
        wait_for("the next spare", lambda: len(_spares(net_server)) == 1, 60)
        [stray] = _spares(net_server)
        stop_process(net_server.proc, signal.SIGKILL)
        net_server.start()
        assert _spares(net_server) == [] and not _tap_exists(stray)
        assert str(net_server.data_dir / "vms" / stray) not in _processes()
        assert sh("cat /workspace/f") == "kept\n"
        assert _vm_connect(c, vm_id, lan.peer_ip, 8080) == f"lan-hello peer={guest}"

        # spares go with their snapshot
        assert c.post("/v1/vms", json={**shape, "snapshotId": snap}).status_code == 201
        wait_for("a spare again", lambda: len(_spares(net_server)) == 1, 60)
        [spare] = _spares(net_server)
        for v in c.get("/v1/vms").json():
            assert c.delete(f"/v1/vms/{v['id']}").status_code == 204
        assert not _tap_exists(vm_id)
        assert c.delete(f"/v1/snapshots/{snap}").status_code == 204
        assert _spares(net_server) == [] and not _tap_exists(spare)
        assert str(net_server.data_dir / "vms" / spare) not in _processes()


WARM_DENO = "pgrep -f 'deno run .*runner[.]ts' || true"


def _spares_deno(c: httpx.Client, vm_id: str, claimed_at: float) -> int:
    """The warm Deno of a VM just made from a spare of a snapshot that held one: the spare started it again
    at its own restore (and rehearsed, and started the next) and waited for it; the claim kept it (no copy).
    Its age in the guest's running time (the paused spare's clock stood still) exceeds the time since the
    claim began: it is older than the claim. Its PID."""
    start = "cut -d')' -f2 /proc/$p/stat | awk '{print $20}'"  # clock ticks after boot
    age = f"p=$({WARM_DENO}); echo $p $({start}) $(cut -d' ' -f1 /proc/uptime)"
    found = c.post(f"/v1/vms/{vm_id}/exec", json={"cmd": age}).json()["stdout"].split()
    assert len(found) == 3, f"no warm Deno right after the claim: {found}"
    pid, started, uptime = found
    since_claim = time.monotonic() - claimed_at
    assert float(uptime) - int(started) / 100 > since_claim, (started, uptime, since_claim)
    return int(pid)


def _processes() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
