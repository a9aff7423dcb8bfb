"""The rerobots surface on real QEMU VMs, driven by rerobots' own Python client (``rerobots.api.APIClient``
pointed at the server): SSH logins as root with the returned key, checked host keys, the firewall seen from
a network namespace, and a reservation served when a deployment frees up, with its event callback."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from rerobots.api import APIClient, BusyWorkspaceDeployment

from sheesh.control.sshkeys import generate_key_pair
from sheesh.image.builder import BuiltImage
from tests.gitrepos import commit, make_repo
from tests.server import ServerProcess, running_server
from tests.vm.conftest import Lan

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def rr_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage, lan: Lan) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("rerobots") / "data"
    env = {
        "SHEESH_NETWORK": "on",
        "SHEESH_NET_UPLINKS": f'["{lan.host_if}"]',
        "SHEESH_NODE_PUBLIC_HOST": lan.host_ip,
        "SHEESH_PORT_FORWARD_RANGE": "[23500, 23599]",
        "SHEESH_VPN_PORT_RANGE": "[23600, 23650]",
        "SHEESH_TEMPLATES": "true",
        "SHEESH_DEFAULT_DEPLOYMENTS": "2",
        "SHEESH_MEDIA_BLOCKED_NETWORKS": "[]",  # the event receiver of the test listens on loopback
        "SHEESH_CI_LOCAL_REPO_ROOTS": json.dumps([str(data.parent / "repos")]),
    }
    with running_server(data, guest_image.path.parent.parent, **env) as srv:
        _warm_template(srv)
        yield srv


def _warm_template(srv: ServerProcess) -> None:
    """Instances of basic_vm restore from the shape's template: boot VMs until it exists (a template build
    competing with the tests' VMs for the two cores would only make them slow)."""
    deadline = time.monotonic() + 300
    with srv.client() as c:
        while True:
            vm = c.post("/v1/vms", json={"cpu": 1, "memMb": 256, "allowIps": []}).json()
            assert c.delete(f"/v1/vms/{vm['id']}").status_code == 204
            if vm["provisionMode"] == "snapshot":
                return
            assert time.monotonic() < deadline, "no template was built"
            time.sleep(3)


@pytest.fixture(autouse=True)
def _terminate_leftovers(rr_server: ServerProcess) -> Iterator[None]:
    """Each test starts with every deployment free, even after a failed one."""
    yield
    api = _api(rr_server)
    for instance_id in api.get_instances():
        api.terminate_instance(instance_id)
    for instance_id in api.get_instances(include_terminated=True):
        _ended(api, instance_id)
    for res in api.get_reservations():
        api.cancel_reservation(res["id"])


def _api(srv: ServerProcess) -> APIClient:
    return APIClient(api_token=srv.api_key, base_uri=srv.url, ignore_env=True)


def _ready(api: APIClient, instance_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info: dict[str, Any] = api.get_instance_info(instance_id)
        if info["status"] != "INIT" or time.monotonic() > deadline:
            assert info["status"] == "READY", info
            return info
        time.sleep(0.2)


def _ssh(tmp: Path, info: dict[str, Any], key: str, command: str) -> subprocess.CompletedProcess[str]:
    """``ssh root@fwd`` with ``key``, accepting only the host keys the API reported."""
    ident = tmp / f"key-{info['id']}"
    ident.write_text(key)
    ident.chmod(0o600)
    known = tmp / f"known-{info['id']}"
    host, port = info["fwd"]["ipv4"], info["fwd"]["port"]
    known.write_text("".join(f"[{host}]:{port} {k}\n" for k in info["hostkeys"]))
    argv = [
        "ssh",
        "-i",
        str(ident),
        "-p",
        str(port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "ConnectTimeout=60",
        f"root@{host}",
        command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _banner(lan: Lan, host: str, port: int) -> str:
    return lan.connect(host, port)


def _provision_mode(srv: ServerProcess, instance_id: str) -> str:
    with srv.client() as c:
        vm_id = c.get(f"/instance/{instance_id}").json()["vmId"]
        return str(c.get(f"/v1/vms/{vm_id}").json()["provisionMode"])


def test_ssh_as_root_with_the_returned_key_and_firewall(rr_server: ServerProcess, lan: Lan, tmp_path: Path) -> None:
    api = _api(rr_server)
    assert api.get_wtypes() == ["basic_vm"]
    deployments = api.get_wdeployments(types=["basic_vm"])
    assert len(deployments) == 2 and deployments[0]["queuelen"] == 0
    launched = api.request_instance("basic_vm")
    assert launched["success"] is True and "BEGIN OPENSSH PRIVATE KEY" in launched["sshkey"]
    info = _ready(api, launched["id"])
    assert info["fwd"]["ipv4"] == lan.host_ip and 23500 <= info["fwd"]["port"] <= 23599
    done = _ssh(tmp_path, info, launched["sshkey"], "id -u && cat /etc/hostname")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "0"
    wrong = _ssh(tmp_path, {**info, "id": "other"}, generate_key_pair("other").private_openssh, "true")
    assert wrong.returncode == 255 and "Permission denied" in wrong.stderr, "another key is refused"
    no_key = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    password = subprocess.run(
        ["ssh", "-p", str(info["fwd"]["port"]), *no_key, "-o", "PreferredAuthentications=password,keyboard-interactive",
         f"root@{lan.host_ip}", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert password.returncode == 255 and "Permission denied" in password.stderr

    # the firewall, seen from the LAN: open to all at first, then nothing, then one source
    host, port = lan.host_ip, info["fwd"]["port"]
    assert _banner(lan, host, port).startswith("SSH-2.0-OpenSSH")
    assert api.get_firewall_rules(launched["id"]) == [["0.0.0.0/0", "ACCEPT"]]
    api.flush_firewall_rules(launched["id"])
    assert api.get_firewall_rules(launched["id"]) == []
    assert _banner(lan, host, port) == "timeout", "no rules: everything is dropped"
    api.add_firewall_rule(launched["id"], "ACCEPT", f"{lan.peer_ip}/32")
    api.add_firewall_rule(launched["id"], "REJECT", f"{lan.other_ip}/32")
    assert _banner(lan, host, port).startswith("SSH-2.0-OpenSSH")
    assert lan.connect(host, port, src=lan.other_ip) == "refused"

    api.terminate_instance(launched["id"])
    deadline = time.monotonic() + 60
    while api.get_instance_info(launched["id"])["status"] != "TERMINATED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert api.get_instance_info(launched["id"])["status"] == "TERMINATED"
    assert lan.connect(host, port) in ("refused", "timeout"), "the forward is gone with the VM"


def test_clones_of_one_template_have_their_own_host_keys(rr_server: ServerProcess, tmp_path: Path) -> None:
    api = _api(rr_server)
    first, second = api.request_instance("basic_vm"), api.request_instance("basic_vm")
    one, two = _ready(api, first["id"]), _ready(api, second["id"])
    assert _provision_mode(rr_server, first["id"]) == _provision_mode(rr_server, second["id"]) == "snapshot"
    assert one["hostkeys"] and two["hostkeys"] and set(one["hostkeys"]).isdisjoint(two["hostkeys"])
    for info, launched in ((one, first), (two, second)):
        done = _ssh(tmp_path, info, launched["sshkey"], "id -un")
        assert done.returncode == 0 and done.stdout.strip() == "root", done.stderr


def _ended(api: APIClient, instance_id: str) -> None:
    deadline = time.monotonic() + 60
    while api.get_instance_info(instance_id)["status"] != "TERMINATED":
        assert time.monotonic() < deadline
        time.sleep(0.2)


class _Receiver(BaseHTTPRequestHandler):
    events: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    _Receiver.events = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/events"
    srv.shutdown()
    srv.server_close()


def test_a_reservation_becomes_an_instance_when_the_deployment_frees_up(
    rr_server: ServerProcess, receiver: str, tmp_path: Path
) -> None:
    api = _api(rr_server)
    with rr_server.client() as admin:
        dep = admin.post("/v1/deployments", json={"type": "basic_vm", "region": "lab"}).json()["id"]
        taken = [d["id"] for d in api.get_wdeployments() if d["id"] != dep]
        holders = [api.request_instance(d) for d in taken]
        first = api.request_instance(dep)
        for launched in (*holders, first):
            _ready(api, launched["id"])
        with pytest.raises(BusyWorkspaceDeployment):
            api.request_instance(dep)
        queued = api.request_instance(dep, reserve=True, event_url=receiver)
        assert queued["success"] is False
        assert api.get_reservations() == [
            {"id": queued["id"], "created": api.get_reservations()[0]["created"], "desc": f"deployment {dep}"}
        ]
        assert api.get_wdeployment_info(dep)["queuelen"] == 2

        api.terminate_instance(first["id"])
        deadline = time.monotonic() + 120
        while not _Receiver.events and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_Receiver.events) == 1, "the event receiver got the reservation's event"
        event = _Receiver.events[0]
        assert event["event"] == "reservation" and event["reservation"] == queued["id"]
        assert event["status"] == "READY" and event["deployment"] == dep
        info = api.get_instance_info(event["instance"])
        assert info["status"] == "READY" and info["deployment"] == dep
        assert api.get_reservations() == []
        done = _ssh(tmp_path, info, queued["sshkey"], "id -u")
        assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
        for launched in (*holders, {"id": event["instance"]}):
            api.terminate_instance(launched["id"])
            _ended(api, launched["id"])
        assert admin.delete(f"/v1/deployments/{dep}").status_code == 204
        assert httpx.get(f"{rr_server.url}/deployment/{dep}").status_code == 404


def test_vpn_clients_reach_the_instance_and_nothing_else(rr_server: ServerProcess, lan: Lan, tmp_path: Path) -> None:
    """A real OpenVPN client in the test's LAN namespace connects with the returned .ovpn and reaches the
    instance's SSH port through the tunnel, past a firewall that drops the LAN; the node itself stays shut."""
    api = _api(rr_server)
    launched = api.request_instance("basic_vm", vpn=True)
    info = _ready(api, launched["id"])
    deadline = time.monotonic() + 60
    while info["vpn"]["status"] == "preparing" and time.monotonic() < deadline:
        time.sleep(0.2)
        info = api.get_instance_info(launched["id"])
    assert info["vpn"] == {"status": "ready", "clients": []}, info
    creds = api.get_vpn_newclient(launched["id"])
    assert f"remote {lan.host_ip} " in creds["ovpn"] and "<key>" in creds["ovpn"]
    with rr_server.client() as c:
        assert c.get(f"/vpn/{launched['id']}").json() == {"status": "ready", "clients": [creds["client_id"]]}
        guest = c.get(f"/v1/vms/{info['vmId']}").json()["guestIp"]
    api.flush_firewall_rules(launched["id"])
    assert lan.connect(guest, 22) == "timeout", "the LAN is dropped by the firewall"

    ovpn = tmp_path / "client.ovpn"
    ovpn.write_text(creds["ovpn"])
    log = tmp_path / "client.log"
    client = subprocess.Popen(
        ["ip", "netns", "exec", lan.ns, "openvpn", "--config", str(ovpn), "--log", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while "Initialization Sequence Completed" not in (log.read_text() if log.exists() else ""):
            assert client.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert lan.connect(guest, 22).startswith("SSH-2.0-OpenSSH"), "through the tunnel"
        server_side = str(ipaddress.ip_network(_vpn_network(rr_server, launched["id"])).network_address + 1)
        assert lan.connect(server_side, rr_server.port) == "timeout", "VPN clients do not reach the node"
    finally:
        client.terminate()
        client.wait(10)
    assert lan.connect(guest, 22) == "timeout"
    api.terminate_instance(launched["id"])
    _ended(api, launched["id"])
    assert not list((rr_server.data_dir / "vms").glob("*/vpn/openvpn.pid")), "the VPN server is gone"


def _vpn_network(srv: ServerProcess, instance_id: str) -> str:
    """The instance's VPN client network, from the VPN server's config on the node."""
    configs = list((srv.data_dir / "vms").glob("*/vpn/server.conf"))
    assert len(configs) == 1
    line = next(ln for ln in configs[0].read_text().splitlines() if ln.startswith("server "))
    _, address, mask = line.split()
    return str(ipaddress.ip_network(f"{address}/{mask}"))


def _finished(srv: ServerProcess, jid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    with srv.client() as c:
        while True:
            job: dict[str, Any] = c.get(f"/ci/job/{jid}").json()
            if job["status"] not in ("queued", "running"):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.5)


def test_ci_jobs_on_a_local_repository_pass_and_fail(rr_server: ServerProcess) -> None:
    repo = Path(rr_server.env["SHEESH_CI_LOCAL_REPO_ROOTS"].strip('[]"')) / "app"
    good = make_repo(
        repo,
        {
            ".rerobots.yml": "env: {WHO: ci}\nscript:\n  - test -f main.py\n  - python3 main.py\n  - git log\n",
            "main.py": "import os\nprint('hello from', os.environ['WHO'], os.getuid())\n",
        },
    )
    bad = commit(repo, {".rerobots.yml": "script:\n  - echo about to fail\n  - exit 7\n  - echo never\n"})
    api = _api(rr_server)
    pid = api.create_ci_project(f"file://{repo}")
    assert [p["id"] for p in api.get_ci_projects()["projects"]] == [pid]
    first = _finished(rr_server, api.get_ci_projects()["projects"][0]["jobs"][0])
    assert first["status"] == "failed" and first["exit_code"] == 7, first["log"]
    assert "about to fail" in first["log"] and "never" not in first["log"].replace("$ echo never", "")

    passed = _finished(rr_server, api.submit_ci_job(pid, "main", good))
    assert passed["status"] == "passed" and passed["exit_code"] == 0, passed["log"]
    assert "hello from ci 1000" in passed["log"] and good[:7] in passed["log"]
    failed = _finished(rr_server, api.submit_ci_job(pid, "main", bad))
    assert failed["status"] == "failed" and failed["exit_code"] == 7
    with rr_server.client() as c:
        assert not [vm for vm in c.get("/v1/vms").json() if vm["state"] != "DELETING"], "job VMs are deleted"
