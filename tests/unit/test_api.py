"""HTTP surface on fakes: auth, status codes, validation messages, response shapes."""

import re
import threading

import pytest
from fastapi.testclient import TestClient

from sheesh import servertiming
from sheesh.control.node_client import FakeNodeClient
from sheesh.models import ExecResult, GuestTiming, Vm
from sheesh.servertiming import durations
from tests.fakes import ADMIN as KEY
from tests.fakes import FakeStack

GOOD = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"], "outboundInternet": True}


@pytest.fixture
def client(stack: FakeStack) -> tuple[TestClient, FakeNodeClient]:
    return stack.client, stack.node


def test_auth_required_on_v1(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = c.get("/v1/vms", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"message": "missing or invalid API key"}
    assert c.get("/openapi.json").status_code == 200


def test_create_matches_seed_shape(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    r = c.post("/v1/vms", json=GOOD, headers=KEY)
    assert r.status_code == 201
    body = r.json()
    assert re.fullmatch(r"vm-[0-9a-f]{12}", body["id"])
    assert body["state"] == "RUNNING" and body["cpu"] == 1 and body["memMb"] == 256
    assert body["guestIp"] == "172.16.0.2" and body["provisionMode"] == "boot"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["createdAt"])
    assert c.get(f"/v1/vms/{body['id']}", headers=KEY).json() == body
    assert [v["id"] for v in c.get("/v1/vms", headers=KEY).json()] == [body["id"]]
    assert body["kind"] == "sandbox"


def test_full_vms_boot_and_have_no_snapshots(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, node = client
    r = c.post("/v1/vms", json={**GOOD, "kind": "full"}, headers=KEY)
    assert r.status_code == 201 and r.json()["kind"] == "full" and r.json()["provisionMode"] == "boot"
    vm = r.json()["id"]
    assert node.specs[vm].kind == "full"
    r = c.post(f"/v1/vms/{vm}/snapshots", headers=KEY)
    assert r.status_code == 409 and "full VM" in r.json()["message"]
    assert c.delete(f"/v1/vms/{vm}/cdrom", headers=KEY).status_code == 204
    assert ("eject_cdrom", vm) in node.calls
    assert c.post(f"/v1/vms/{vm}/fork", json={"count": 1}, headers=KEY).status_code == 409
    sandbox = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    r = c.delete(f"/v1/vms/{sandbox}/cdrom", headers=KEY)
    assert r.status_code == 409 and "only full VMs" in r.json()["message"]
    snap = c.post(f"/v1/vms/{sandbox}/snapshots", headers=KEY).json()["id"]
    r = c.post("/v1/vms", json={**GOOD, "kind": "full", "snapshotId": snap}, headers=KEY)
    assert r.status_code == 400 and "not from a snapshot" in r.json()["message"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({**GOOD, "cpu": 0}, "cpu"),
        ({**GOOD, "cpu": 9}, "cpu"),
        ({**GOOD, "cpu": "1"}, "cpu"),
        ({**GOOD, "cpu": 1.5}, "cpu"),
        ({**GOOD, "memMb": 127}, "memMb"),
        ({**GOOD, "memMb": 8193}, "memMb"),
        ({**GOOD, "allowIps": ["300.1.1.1/32"]}, "not a valid CIDR"),
        ({**GOOD, "allowIps": ["2001:db8::/32"]}, "guests have IPv4 only"),
        ({**GOOD, "allowIps": "10.0.0.0/8"}, "allowIps"),
        ({**GOOD, "outboundInternet": "yes"}, "outboundInternet"),
        ({**GOOD, "diskSizeMb": 0}, "diskSizeMb"),
        ({**GOOD, "bogus": 1}, "unknown field"),
        ({"cpu": 1, "memMb": 256}, "allowIps"),
        ({**GOOD, "kind": "vps"}, "kind"),
    ],
)
def test_create_rejects_bad_input(
    client: tuple[TestClient, FakeNodeClient], payload: dict[str, object], fragment: str
) -> None:
    c, node = client
    r = c.post("/v1/vms", json=payload, headers=KEY)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]
    assert node.calls == []


def test_malformed_json_and_missing_body(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    r = c.post("/v1/vms", content=b"{nope", headers={**KEY, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["message"] == "request body is not valid JSON"
    r = c.post("/v1/vms", headers=KEY)
    assert r.status_code == 400 and "required" in r.json()["message"]


def test_unknown_vm_is_404_everywhere(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    for method, path in [("GET", ""), ("POST", "/start"), ("POST", "/stop"), ("DELETE", "")]:
        r = c.request(method, f"/v1/vms/vm-missing{path}", headers=KEY)
        assert r.status_code == 404 and r.json() == {"message": "VM vm-missing not found"}
    r = c.post("/v1/vms/vm-missing/exec", json={"cmd": "true"}, headers=KEY)
    assert r.status_code == 404


def test_lifecycle_status_codes(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    assert c.post(f"/v1/vms/{vm}/start", headers=KEY).status_code == 409
    r = c.post(f"/v1/vms/{vm}/stop", headers=KEY)
    assert r.status_code == 204 and r.content == b""
    assert c.post(f"/v1/vms/{vm}/stop", headers=KEY).status_code == 409
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY)
    assert r.status_code == 409 and "STOPPED" in r.json()["message"]
    assert c.post(f"/v1/vms/{vm}/start", headers=KEY).status_code == 204
    assert c.delete(f"/v1/vms/{vm}", headers=KEY).status_code == 204
    assert c.get(f"/v1/vms/{vm}", headers=KEY).status_code == 404


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "cmd"),
        ({"cmd": ""}, "cmd"),
        ({"cmd": 5}, "cmd"),
        ({"cmd": "ls", "cwd": "/etc"}, "cwd"),
        ({"cmd": "ls", "cwd": "/workspace/../etc"}, "cwd"),
        ({"cmd": "ls", "cwd": "/workspace/a\u0000"}, "cwd"),
        ({"cmd": "ls", "env": {"BAD-NAME": "x"}}, "environment variable"),
        ({"cmd": "ls", "env": {"A": 1}}, "env"),
        ({"cmd": "ls", "timeoutMs": 0}, "timeoutMs"),
        ({"cmd": "ls", "timeoutMs": 10**9}, "timeoutMs"),
    ],
)
def test_exec_rejects_bad_input(
    client: tuple[TestClient, FakeNodeClient], payload: dict[str, object], fragment: str
) -> None:
    c, _ = client
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    r = c.post(f"/v1/vms/{vm}/exec", json=payload, headers=KEY)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]


def test_exec_response_shape(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "echo hi", "timeoutMs": 1000}, headers=KEY)
    assert r.status_code == 200
    assert r.json() == {"exitCode": 0, "stdout": "echo hi", "stderr": "", "timedOut": False, "truncated": False}


def test_a_program_run_says_where_its_time_went(client: tuple[TestClient, FakeNodeClient]) -> None:
    """``Server-Timing``: the control plane's part (``exec``) always; the node's call and the agent's own part
    as the node reports them."""
    c, node = client
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    node.exec_result = ExecResult(0, "", "")  # a node that does not report timing
    plain = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY)
    assert durations(plain.headers["server-timing"]).keys() == {"exec"}
    node.exec_result = ExecResult(0, "", "", timing=GuestTiming(node_ms=8.25, guest_ms=6.5))
    timed = durations(c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY).headers["server-timing"])
    assert timed.keys() == {"exec", "node", "guest"}
    assert timed["node"] == 8.25 and timed["guest"] == 6.5 and timed["exec"] > 0
    node.exec_result = ExecResult(0, "", "", timing=GuestTiming(node_ms=3.0))  # an agent that does not say
    older = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY).headers["server-timing"]
    assert durations(older) == {"exec": durations(older)["exec"], "node": 3.0}
    script = c.post(f"/v1/vms/{vm}/run-ts", json={"code": "1"}, headers=KEY)
    assert script.status_code == 200
    assert durations(script.headers["server-timing"]).keys() == {"exec", "node", "guest"}
    documented = c.get("/openapi.json").json()["paths"]["/v1/vms/{vm_id}/exec"]["post"]["responses"]["200"]
    assert "Server-Timing" in documented["headers"]


def test_server_timing_values_read_back_and_malformed_metrics_are_skipped() -> None:
    value = servertiming.header([("exec", 11.2041, "control plane"), ("guest", 6.9, "guest agent")])
    assert value == 'exec;dur=11.204;desc="control plane", guest;dur=6.900;desc="guest agent"'
    assert servertiming.durations(value) == {"exec": 11.204, "guest": 6.9}
    assert servertiming.durations('cache;desc="hit", db;dur=abc, ;dur=1, total;dur=2.5') == {"total": 2.5}


def test_guest_operations_read_their_vm_once(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ownership check's read of the VM is the one its guest operation uses (a second read cost an exec
    about 0.25 ms after an idle gap)."""
    c = stack.client
    vm = c.post("/v1/vms", json=GOOD, headers=KEY).json()["id"]
    reads: list[str] = []
    get_vm = stack.svc.store.get_vm

    def counted(vm_id: str) -> Vm | None:
        if threading.current_thread().name != "exec-history":  # (its writes check the VM, after the answer)
            reads.append(vm_id)
        return get_vm(vm_id)

    monkeypatch.setattr(stack.svc.store, "get_vm", counted)
    gz = {"Content-Type": "application/gzip", **KEY}
    requests = {
        "exec": lambda: c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY),
        "run-ts": lambda: c.post(f"/v1/vms/{vm}/run-ts", json={"code": "1"}, headers=KEY),
        "run-js": lambda: c.post(f"/v1/vms/{vm}/run-js", json={"code": "1"}, headers=KEY),
        "upload": lambda: c.post(f"/v1/vms/{vm}/files/upload?dest=/workspace", content=b"x", headers=gz),
        "download": lambda: c.get(f"/v1/vms/{vm}/files/download?path=/workspace", headers=KEY),
    }
    for name, request in requests.items():
        reads.clear()
        assert request().status_code < 300, name
        assert reads == [vm], name
    stack.node.running.discard(vm)  # a stale record still ends in 409 and the store learns it (machine_checked)
    assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}, headers=KEY).status_code == 409
    assert c.get(f"/v1/vms/{vm}", headers=KEY).json()["state"] == "STOPPED"


def test_unknown_route_is_json_404(client: tuple[TestClient, FakeNodeClient]) -> None:
    c, _ = client
    r = c.get("/nope", headers=KEY)
    assert r.status_code == 404 and r.json() == {"message": "Not Found"}
