"""The rerobots surface (seed 001) on the fake stack: every endpoint, its defaults, paging and errors."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.control.services import Services
from sheesh.control.sshkeys import generate_key_pair
from sheesh.errors import UnavailableError
from sheesh.workspaces import Instance, InstanceStatus
from tests.fakes import ADMIN, FakeStack, fake_services, user_headers

V1 = {"Accept": "application/vnd.rerobots.v1+json"}


def _bearer(headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": "Bearer " + headers["X-API-Key"]}


def _wait(c: TestClient, inst: str, headers: dict[str, str], status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        info: dict[str, Any] = c.get(f"/instance/{inst}", headers=headers).json()
        if info["status"] == status or time.monotonic() > deadline:
            assert info["status"] == status, info
            return info
        time.sleep(0.02)


def _new(c: TestClient, target: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> Any:
    """POST /new the way rerobots clients do: a JSON body without a Content-Type header."""
    data = json.dumps(body).encode() if body is not None else None
    return c.post(f"/new/{target}", content=data, headers=headers)


@pytest.fixture
def c(stack: FakeStack) -> TestClient:
    return stack.client


def test_summary_workspaces_and_deployments_need_no_token(c: TestClient, stack: FakeStack) -> None:
    assert "POST /new/{:workspace_type,:deploymentID}" in c.get("/").json()["commands"]
    assert c.get("/workspaces").json() == {"workspace_types": ["basic_vm"]}
    deps = c.get("/deployments").json()
    assert deps["page_count"] == 1 and len(deps["workspace_deployments"]) == stack.svc.settings.default_deployments
    assert "info" not in deps
    first = deps["workspace_deployments"][0]
    one = c.get(f"/deployment/{first}").json()
    assert one["id"] == first and one["type"] == "basic_vm" and one["region"] == "local"
    assert one["icounter"] == 0 and one["queuelen"] == 0 and one["created"].endswith("Z")
    assert c.get(f"/queuelen/{first}").json() == {"id": first, "queuelen": 0}
    missing = c.get("/queuelen/nope")
    assert missing.status_code == 404 and missing.json()["error_message"] == "deployment nope not found"


def test_deployment_queries_sorting_paging_and_info(c: TestClient) -> None:
    made = c.post("/v1/workspace-types", json={"name": "big_vm", "cpu": 2, "memMb": 512}, headers=ADMIN)
    assert made.status_code == 201 and made.json()["memMb"] == 512
    big = c.post("/v1/deployments", json={"type": "big_vm", "region": "lab-2"}, headers=ADMIN).json()
    assert big["region"] == "lab-2" and big["queuelen"] == 0
    all_ids = c.get("/deployments").json()["workspace_deployments"]
    assert all_ids[-1] == big["id"], "inc_wtype: basic_vm before big_vm"
    assert c.get("/deployments", params={"sort_by": "dec_wtype"}).json()["workspace_deployments"][0] == big["id"]
    assert c.get("/deployments", params={"sort_by": "dec_created"}).json()["workspace_deployments"][0] == big["id"]
    assert c.get("/deployments/big_vm").json()["workspace_deployments"] == [big["id"]]
    assert c.get("/deployments/big_vm", params={"types": "basic_vm"}).json()["workspace_deployments"] == all_ids[:-1]
    assert c.get("/deployments", params={"q": "lab-2"}).json()["workspace_deployments"] == [big["id"]]
    info = c.get("/deployments", params={"info": "t", "types": "big_vm"}).json()["info"]
    assert info == {big["id"]: {"type": "big_vm", "region": "lab-2", "queuelen": 0}}
    paged = c.get("/deployments", params={"max_per_page": 3, "page": 99}).json()
    assert paged == {"workspace_deployments": all_ids[3:], "page_count": 2}, "a page past the end is the last"
    assert c.get("/deployments", params={"maxlen": 0}).json()["workspace_deployments"] == all_ids
    for bad in ({"sort_by": "sideways"}, {"maxlen": "-1"}, {"maxlen": "x"}):
        r = c.get("/deployments", params=bad)
        assert r.status_code == 400 and r.json()["error_message"], bad


def test_new_instance_with_a_generated_key_becomes_ready_with_ssh_details(c: TestClient, stack: FakeStack) -> None:
    alice = _bearer(user_headers(c, "alice"))
    r = _new(c, "basic_vm", alice)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and set(body) == {"success", "id", "sshkey"}
    private = serialization.load_ssh_private_key(body["sshkey"].encode(), None)
    info = _wait(c, body["id"], alice, "READY")
    assert info["type"] == "basic_vm" and info["region"] == "local" and "endtime" not in info
    assert info["fwd"]["ipv4"] == "127.0.0.1" and 20000 <= info["fwd"]["port"] <= 29999
    assert info["hostkeys"] and info["hostkeys"][0].startswith("ssh-ed25519 ")
    inst = stack.svc.instances.get(body["id"])
    assert inst.vm_id is not None
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert stack.node.authorized[inst.vm_id] == [public.decode() + " rerobots-instance"]
    assert c.get("/instances", headers=alice).json() == {"workspace_instances": [body["id"]], "page_count": 1}
    assert c.get(f"/firewall/{body['id']}", headers=alice).json() == {"rules": [["0.0.0.0/0", "ACCEPT"]]}
    dep = info["deployment"]
    assert c.get(f"/queuelen/{dep}").json()["queuelen"] == 1, "in use"

    assert c.post(f"/terminate/{body['id']}", headers=alice).json() == {"success": True}
    ended = _wait(c, body["id"], alice, "TERMINATED")
    assert ended["endtime"] >= ended["starttime"] and "fwd" not in ended
    assert stack.svc.vms.store.get_vm(inst.vm_id) is None, "the VM is deleted"
    assert c.get(f"/deployment/{dep}").json()["icounter"] == 1
    assert c.get("/instances", headers=alice).json()["workspace_instances"] == []
    listed = c.get("/instances", params={"include_terminated": ""}, headers=alice).json()
    assert listed["workspace_instances"] == [body["id"]]
    again = c.post(f"/terminate/{body['id']}", headers=alice)
    assert again.status_code == 409 and again.json()["error_message"] == "instance is already terminated"
    assert c.get(f"/firewall/{body['id']}", headers=alice).json() == {"rules": None}


def test_a_sent_public_key_is_used_and_no_private_key_returned(c: TestClient, stack: FakeStack) -> None:
    alice = user_headers(c, "alice")
    pair = generate_key_pair("me@laptop")
    body = _new(c, "basic_vm", alice, {"sshkey": pair.public}).json()
    assert set(body) == {"success", "id"}
    vm_id = _wait(c, body["id"], alice, "READY") and stack.svc.instances.get(body["id"]).vm_id
    assert stack.node.authorized[str(vm_id)] == [pair.public]
    for bad in ({"sshkey": "ssh-ed25519 notbase64"}, {"sshkey": "a\nb"}, {"vpn": "yes"}, {"surprise": 1}):
        r = _new(c, "basic_vm", alice, bad)
        assert r.status_code == 400 and r.json()["error_message"], bad
    r = c.post("/new/basic_vm", content=b"{not json", headers=alice)
    assert r.status_code == 400 and r.json()["error_message"] == "request body is not valid JSON"
    r = _new(c, "no_such_type", alice)
    assert r.status_code == 404 and "no_such_type" in r.json()["error_message"]


def test_instances_are_private_and_errors_speak_rerobots(c: TestClient) -> None:
    alice, bob = user_headers(c, "alice"), user_headers(c, "bob")
    inst = _new(c, "basic_vm", alice).json()["id"]
    for path in (f"/instance/{inst}", f"/firewall/{inst}", f"/vpn/{inst}"):
        r = c.get(path, headers=bob)
        assert r.status_code == 404 and r.json() == {
            "message": "instance not found",
            "error_message": "instance not found",
        }
    assert c.post(f"/terminate/{inst}", headers=bob).status_code == 404
    assert c.get("/instances", headers=bob).json()["workspace_instances"] == []
    r = c.get("/instances", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error_message"] == "wrong authorization token"
    assert c.get("/instances").status_code == 401


def test_accept_header_selects_the_version(c: TestClient) -> None:
    assert c.get("/workspaces", headers=V1).status_code == 200
    r = c.get("/workspaces", headers={"Accept": "application/vnd.rerobots.v2+json"})
    assert r.status_code == 406 and "v2" in r.json()["error_message"] and "v1" in r.json()["error_message"]
    assert c.get("/workspaces", headers={"Accept": "*/*"}).status_code == 200
    assert int(c.get("/workspaces").headers["X-RateLimit-Remaining"]) < int(c.get("/").headers["X-RateLimit-Limit"])


def test_firewall_rules_follow_the_seed(c: TestClient, stack: FakeStack) -> None:
    alice = user_headers(c, "alice")
    inst = _new(c, "basic_vm", alice).json()["id"]
    _wait(c, inst, alice, "READY")
    vm_id = str(stack.svc.instances.get(inst).vm_id)
    assert c.delete(f"/firewall/{inst}", headers=alice).json() == {"rules": []}
    assert stack.node.networks[vm_id].firewall == (), "cleared: everything is dropped"
    # an empty body (no JSON payload) lets the caller in; TestClient's address is not IPv4: src is required
    r = c.post(f"/firewall/{inst}", headers=alice)
    assert r.status_code == 400 and "src is required" in r.json()["error_message"]
    rules = c.post(f"/firewall/{inst}", content=b'{"src": "10.1.2.0/24"}', headers=alice).json()["rules"]
    assert rules == [["10.1.2.0/24", "ACCEPT"]]
    rules = c.post(f"/firewall/{inst}", content=b'{"src": "10.9.9.9", "action": "REJECT"}', headers=alice).json()
    assert rules["rules"] == [["10.1.2.0/24", "ACCEPT"], ["10.9.9.9/32", "REJECT"]]
    assert [r.src for r in stack.node.networks[vm_id].firewall] == ["10.1.2.0/24", "10.9.9.9/32"]
    for bad in (b'{"src": "10.0.0.0/40"}', b'{"src": "::1/128"}', b'{"action": "ALLOW"}'):
        r = c.post(f"/firewall/{inst}", content=bad, headers=alice)
        assert r.status_code == 400 and r.json()["error_message"], bad


def test_reservations_queue_first_come_first_served_and_call_back(c: TestClient, stack: FakeStack) -> None:
    alice, bob, carol = user_headers(c, "alice"), user_headers(c, "bob"), user_headers(c, "carol")
    deps = c.get("/deployments").json()["workspace_deployments"]
    for dep in deps[1:]:
        assert c.delete(f"/v1/deployments/{dep}", headers=ADMIN).status_code == 204
    first = _new(c, "basic_vm", alice).json()["id"]
    busy = _new(c, "basic_vm", bob)
    assert busy.status_code == 409
    assert busy.json()["result_message"].startswith("All matching workspace deployments are busy")
    assert busy.json()["success"] is False
    sent: list[tuple[str, dict[str, Any]]] = []
    stack.svc.instances.events.send = lambda url, event: sent.append((url, event))  # type: ignore[method-assign]
    queued = _new(c, "basic_vm", bob, {"reserve": True, "eurl": "http://example.test/hook"}).json()
    assert queued["success"] is False and queued["id"] and queued["sshkey"].startswith("-----BEGIN OPENSSH")
    later = _new(c, deps[0], carol, {"reserve": True}).json()
    assert c.get(f"/queuelen/{deps[0]}").json()["queuelen"] == 3
    listed = c.get("/reservations", headers=bob).json()["reservations"]
    assert [(r["id"], r["desc"]) for r in listed] == [(queued["id"], "type basic_vm")]
    assert c.get("/reservations", headers=carol).json()["reservations"][0]["desc"] == f"deployment {deps[0]}"
    assert c.delete(f"/reservation/{queued['id']}", headers=carol).status_code == 404, "not carol's"
    bad = _new(c, "basic_vm", bob, {"reserve": True, "eurl": "ftp://x"})
    assert bad.status_code == 400

    c.post(f"/terminate/{first}", headers=alice)
    _wait(c, first, alice, "TERMINATED")
    bobs = c.get("/instances", headers=bob).json()["workspace_instances"]
    assert len(bobs) == 1, "bob's reservation, the oldest, became an instance"
    info = _wait(c, bobs[0], bob, "READY")
    assert info["deployment"] == deps[0]
    assert c.get("/reservations", headers=bob).json() == {"reservations": []}
    assert c.get(f"/queuelen/{deps[0]}").json()["queuelen"] == 2, "in use + carol's reservation"
    assert sent == [
        (
            "http://example.test/hook",
            {
                "event": "reservation",
                "reservation": queued["id"],
                "instance": bobs[0],
                "deployment": deps[0],
                "type": "basic_vm",
                "status": "READY",
            },
        )
    ]
    assert c.delete(f"/reservation/{later['id']}", headers=carol).json() == {"success": True}
    assert c.get(f"/queuelen/{deps[0]}").json()["queuelen"] == 1


def test_a_launch_that_fails_ends_the_instance_and_frees_the_deployment(c: TestClient, stack: FakeStack) -> None:
    alice = user_headers(c, "alice")
    stack.node.fail_next = UnavailableError("no capacity")
    inst = _new(c, "basic_vm", alice).json()["id"]
    info = _wait(c, inst, alice, "TERMINATED")
    assert info["error"] == "no capacity"
    assert stack.svc.instances.get(inst).status == InstanceStatus.TERMINATED
    assert c.get(f"/queuelen/{info['deployment']}").json()["queuelen"] == 0


def test_admins_manage_types_and_deployments(c: TestClient) -> None:
    alice = user_headers(c, "alice")
    assert (
        c.post("/v1/workspace-types", json={"name": "x_vm", "cpu": 1, "memMb": 256}, headers=alice).status_code == 403
    )
    assert c.get("/v1/workspace-types", headers=alice).json()[0]["name"] == "basic_vm"
    r = c.post("/v1/workspace-types", json={"name": "Bad-Name", "cpu": 1, "memMb": 256}, headers=ADMIN)
    assert r.status_code == 400
    assert (
        c.post("/v1/workspace-types", json={"name": "basic_vm", "cpu": 1, "memMb": 256}, headers=ADMIN).status_code
        == 409
    )
    assert c.delete("/v1/workspace-types/basic_vm", headers=ADMIN).status_code == 409, "it has deployments"
    changed = c.put("/v1/workspace-types/basic_vm", json={"cpu": 2, "memMb": 512, "vpn": False}, headers=ADMIN).json()
    assert (changed["cpu"], changed["memMb"], changed["vpn"]) == (2, 512, False)
    r = _new(c, "basic_vm", alice, {"vpn": True})
    assert r.status_code == 400 and "offers no VPN" in r.json()["error_message"]
    inst = _new(c, "basic_vm", alice).json()["id"]
    _wait(c, inst, alice, "READY")
    used = [d for d in c.get("/v1/deployments", headers=ADMIN).json() if d["instance"] == inst]
    assert len(used) == 1 and used[0]["queuelen"] == 1
    assert c.delete(f"/v1/deployments/{used[0]['id']}", headers=ADMIN).status_code == 409


def test_a_restart_keeps_ready_instances_and_ends_interrupted_launches(settings: Settings) -> None:
    svc, node = fake_services(settings)
    with TestClient(create_app(svc, close_services=False)) as c:
        alice = user_headers(c, "alice")
        ready = _new(c, "basic_vm", alice).json()["id"]
        _wait(c, ready, alice, "READY")
        cut = _new(c, "basic_vm", alice).json()["id"]
        _wait(c, cut, alice, "READY")
    inst = svc.store.get_record(Instance, cut)
    assert inst is not None
    inst.status = InstanceStatus.INIT  # as if the service stopped in the middle of making it ready
    svc.store.save_record(inst)
    again = Services.create(settings, svc.store, node)
    with TestClient(create_app(again)) as c:
        assert c.get(f"/instance/{ready}", headers=alice).json()["status"] == "READY"
        info = _wait(c, cut, alice, "TERMINATED")
        assert "interrupted by a restart" in info["error"]
        assert again.store.get_vm(str(inst.vm_id)) is None
        assert c.get("/workspaces").json()["workspace_types"] == ["basic_vm"], "defaults are made once"
        assert len(c.get("/deployments").json()["workspace_deployments"]) == settings.default_deployments


def test_an_instance_with_a_duration_ends_by_itself(c: TestClient, stack: FakeStack) -> None:
    alice = user_headers(c, "alice")
    r = _new(c, "basic_vm", alice, {"expire_d": 10})
    assert r.status_code == 400, "at least a minute"
    inst = _new(c, "basic_vm", alice, {"expire_d": 60}).json()["id"]
    info = _wait(c, inst, alice, "READY")
    assert info["expiration"] > info["starttime"]
    record = stack.svc.instances.get(inst)
    assert record.expires_at is not None
    record.expires_at -= timedelta(seconds=61)  # as if a minute had passed
    stack.svc.store.save_record(record)
    ended = _wait(c, inst, alice, "TERMINATED")  # the reconcile loop (every 0.2 s here) ends it
    assert ended["endtime"]


def test_deleting_the_vm_of_an_instance_ends_it(c: TestClient, stack: FakeStack) -> None:
    alice = user_headers(c, "alice")
    inst = _new(c, "basic_vm", alice).json()["id"]
    vm_id = _wait(c, inst, alice, "READY")["vmId"]
    assert c.get("/v1/vms", headers=alice).json()[0]["id"] == vm_id, "the user's own VM"
    assert c.delete(f"/v1/vms/{vm_id}", headers=alice).status_code == 204
    ended = _wait(c, inst, alice, "TERMINATED")
    assert ended["error"] == "the instance's VM was deleted"
    assert c.get(f"/queuelen/{ended['deployment']}").json()["queuelen"] == 0
