"""End to end on real QEMU microVMs through the HTTP API of a `sheesh serve` process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from sheesh.servertiming import durations
from tests.server import ServerProcess

pytestmark = pytest.mark.vm
GOOD = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"], "outboundInternet": False}


def _create(c: httpx.Client, **over: object) -> dict[str, object]:
    r = c.post("/v1/vms", json={**GOOD, **over})
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    assert body["state"] == "RUNNING"
    return body


def _exec(c: httpx.Client, vm: object, cmd: str, **extra: object) -> dict[str, object]:
    r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": cmd, **extra})
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def _qemu_pid(server: ServerProcess, vm: object) -> int:
    return int((server.data_dir / "vms" / str(vm) / "qemu.pid").read_text())


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_exec_identity_cwd_env_and_timeout(server: ServerProcess) -> None:
    with server.client() as c:
        vm = _create(c)["id"]
        out = _exec(c, vm, "id -u; id -g; pwd; echo $GREETING; echo err >&2; exit 5", env={"GREETING": "hi"})
        assert out["stdout"] == "1000\n1000\n/workspace\nhi\n"
        assert out["stderr"] == "err\n" and out["exitCode"] == 5
        # the shell took the user on through the image's static sheesh-runas, which became the shell: no
        # supplementary group, all three ids the user's, its parent the agent
        who = "grep -E '^(Uid|Gid|Groups):' /proc/self/status; ps -o comm= -p $PPID; ls /usr/local/libexec"
        ids = _exec(c, vm, who)
        assert ids["stdout"].split() == [
            *("Uid:", "1000", "1000", "1000", "1000", "Gid:", "1000", "1000", "1000", "1000", "Groups:"),
            *("python3", "sheesh-runas"),
        ], ids
        start = time.monotonic()
        out = _exec(c, vm, "sleep 300 & sleep 200", timeoutMs=1500)
        assert out["timedOut"] is True and out["exitCode"] == 124
        assert time.monotonic() - start < 10
        # a killed `sleep` may linger as a zombie until init reaps it (seen under load): dead, so not counted
        alive = (
            "for p in $(pgrep -x sleep); do s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null);"
            ' [ "${s:-Z}" = Z ] || echo $p; done'
        )
        leftovers = _exec(c, vm, alive)
        assert leftovers["stdout"] == "", "timed-out process group was not killed"
        out = _exec(c, vm, "mkdir -p sub && cd sub && pwd")
        assert _exec(c, vm, "pwd", cwd="/workspace/sub")["stdout"] == "/workspace/sub\n"
        r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true", "cwd": "/workspace/missing"})
        assert r.status_code == 400 and "does not exist" in r.json()["message"]
        # where an exec's time went: the agent's part (with the command's run) within the node's call, within
        # the control plane's, within the round trip
        sent = time.perf_counter()
        r = c.post(f"/v1/vms/{vm}/exec", json={"cmd": "sleep 0.3"})
        round_trip_ms = (time.perf_counter() - sent) * 1000
        took = durations(r.headers["server-timing"])
        assert 300 <= took["guest"] < took["node"] < took["exec"] < round_trip_ms, (took, round_trip_ms)
        log = (server.data_dir / "vms" / str(vm) / "serial.log").read_text()
        assert "sheesh-agent: serving" in log
        assert "PIT: stopped)" in log  # the kernel ticks with the local APIC: the PIT's square wave is stopped


def test_stop_start_keeps_disk_and_delete_removes_everything(server: ServerProcess) -> None:
    with server.client() as c:
        vm = _create(c)["id"]
        _exec(c, vm, "echo persisted > /workspace/state.txt")
        pid = _qemu_pid(server, vm)
        assert c.post(f"/v1/vms/{vm}/stop").status_code == 204
        assert c.get(f"/v1/vms/{vm}").json()["state"] == "STOPPED"
        assert not _alive(pid)
        assert c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).status_code == 409
        assert c.post(f"/v1/vms/{vm}/start").status_code == 204
        assert _exec(c, vm, "cat /workspace/state.txt")["stdout"] == "persisted\n"
        pid = _qemu_pid(server, vm)
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
        assert not _alive(pid)
        assert not (server.data_dir / "vms" / str(vm)).exists()
        assert c.get(f"/v1/vms/{vm}").status_code == 404


def test_shape_and_disk_size_reach_the_guest(server: ServerProcess) -> None:
    with server.client() as c:
        vm = _create(c, cpu=2, memMb=512, diskSizeMb=2048)["id"]
        out = _exec(c, vm, "nproc; awk '/MemTotal/{print $2}' /proc/meminfo")
        cpus, mem_kb = out["stdout"].split()  # type: ignore[union-attr]
        assert cpus == "2"
        assert 400_000 < int(mem_kb) <= 512 * 1024
        deadline = time.monotonic() + 30  # resize2fs runs in the background at boot
        while True:
            size_kb = int(_exec(c, vm, "df -k --output=size / | tail -1")["stdout"].strip())  # type: ignore[union-attr]
            if size_kb > 1_500_000 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert size_kb > 1_500_000
        assert c.delete(f"/v1/vms/{vm}").status_code == 204


def test_restart_reattaches_running_vm(server: ServerProcess) -> None:
    ram = Path(server.env["SHEESH_RAM_DIR"])
    with server.client() as c:
        vm = _create(c)["id"]
        lost = _create(c)["id"]
        _exec(c, vm, "echo before > /workspace/note")
        pid, lost_pid = _qemu_pid(server, vm), _qemu_pid(server, lost)
    assert (ram / f"{vm}.ram").exists() and (ram / f"{lost}.ram").exists(), "guest RAM lives in the RAM dir"
    server.stop()
    assert _alive(pid), "stopping the manager must not kill VMs"
    os.kill(lost_pid, signal.SIGKILL)  # this one dies while no manager runs
    server.start()
    with server.client() as c:
        assert c.get(f"/v1/vms/{vm}").json()["state"] == "RUNNING"
        assert c.get(f"/v1/vms/{lost}").json()["state"] == "STOPPED"
        assert not (ram / f"{lost}.ram").exists(), "the dead VM's RAM was freed"
        assert _exec(c, vm, "cat /workspace/note")["stdout"] == "before\n"
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
        assert c.delete(f"/v1/vms/{lost}").status_code == 204
    assert not _alive(pid)
    assert list(ram.glob("*.ram")) == []
