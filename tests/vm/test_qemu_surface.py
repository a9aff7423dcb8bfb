"""run-ts (Deno), tar.gz files and logs on real QEMU microVMs, including every upload rejection."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.archives import bomb, members, targz
from tests.server import ServerProcess

pytestmark = pytest.mark.vm
GZ = {"content-type": "application/gzip"}


@pytest.fixture(scope="module")
def vm(shared_server: ServerProcess) -> Iterator[tuple[httpx.Client, str]]:
    with shared_server.client() as c:
        r = c.post("/v1/vms", json={"cpu": 1, "memMb": 512, "allowIps": ["172.16.0.1/32"]})
        assert r.status_code == 201, r.text
        vm_id = r.json()["id"]
        yield c, vm_id
        c.delete(f"/v1/vms/{vm_id}")


def _sh(c: httpx.Client, vm_id: str, cmd: str) -> str:
    r = c.post(f"/v1/vms/{vm_id}/exec", json={"cmd": cmd})
    assert r.status_code == 200, r.text
    out: str = r.json()["stdout"]
    return out


def test_run_ts_inline_result_error_env_args_and_permissions(vm: tuple[httpx.Client, str]) -> None:
    c, vm_id = vm
    url = f"/v1/vms/{vm_id}/run-ts"
    r = c.post(url, json={"code": "console.log(2 + 2)"})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "4\n" and r.json()["exitCode"] == 0 and "result" not in r.json()

    body = c.post(url, json={"code": 'result.set({ ok: true, answer: 42 }); console.log("done")'}).json()
    assert body["result"] == {"ok": True, "answer": 42}
    assert body["stdout"] == "done\n" and body["stderr"] == "" and body["exitCode"] == 0

    body = c.post(url, json={"code": 'result.error(new TypeError("bad input"))'}).json()
    assert body["exitCode"] != 0
    assert body["error"] == {"name": "TypeError", "message": "bad input"}

    code = 'console.log(Deno.env.get("BASE_URL"), Deno.args.join(","))'
    body = c.post(
        url, json={"code": code, "env": ["BASE_URL=https://api.example.com", "T=1"], "args": ["a", "b c"]}
    ).json()
    assert body["stdout"] == "https://api.example.com a,b c\n", body

    # default deny: env keys not granted, files, subprocesses, network
    for denied in (
        'Deno.env.get("HOME")',
        'Deno.readTextFileSync("/etc/passwd")',
        'new Deno.Command("id").outputSync()',
        'await fetch("http://10.1.2.3/")',
    ):
        body = c.post(url, json={"code": denied}).json()
        assert body["exitCode"] != 0 and "NotCapable" in body["stderr"] + body["stdout"], (denied, body)


def test_run_ts_path_timeout_and_uid(vm: tuple[httpx.Client, str]) -> None:
    c, vm_id = vm
    _sh(c, vm_id, "mkdir -p /workspace/app && echo 'console.log(Deno.uid(), Deno.cwd())' > /workspace/app/main.ts")
    r = c.post(f"/v1/vms/{vm_id}/run-ts", json={"path": "/workspace/app/main.ts"})
    assert r.status_code == 200 and "--allow-sys" in r.json()["stderr"], r.text
    flags = ["--allow-sys=uid", "--allow-read=/workspace"]
    r = c.post(f"/v1/vms/{vm_id}/run-ts", json={"path": "/workspace/app/main.ts", "denoFlags": flags})
    assert r.status_code == 200 and r.json()["stdout"] == "1000 /workspace\n", r.text
    warm = _warm_deno_pid(c, vm_id)
    r = c.post(f"/v1/vms/{vm_id}/run-ts", json={"path": "/workspace/missing.ts"})
    assert r.status_code == 400 and "does not exist" in r.json()["message"]
    warm = _warm_deno_pid(c, vm_id)  # the refused request's Deno is dropped and another started
    r = c.post(f"/v1/vms/{vm_id}/run-ts", json={"code": "while (true) {}", "timeoutMs": 2000})
    assert r.json()["timedOut"] is True and r.json()["exitCode"] == 124
    # the Deno that ran it is gone and reaped (no zombie); only a fresh warm one may be there
    ps = _sh(c, vm_id, "ps -eo pid=,stat=,args=")
    assert str(warm) not in [line.split()[0] for line in ps.splitlines()], ps
    assert not [line for line in ps.splitlines() if line.split()[1].startswith("Z")], ps


def _warm_deno_pid(c: httpx.Client, vm_id: str, timeout_s: float = 120) -> int:
    """The PID of the warm Deno waiting in the VM (waits for it to be started)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = _sh(c, vm_id, "pgrep -f 'deno run .*runner[.]ts' || true").split()
        if pids:
            return int(pids[0])
        assert time.monotonic() < deadline, "no warm Deno was started"
        time.sleep(1)


def test_run_ts_warm_deno(vm: tuple[httpx.Client, str]) -> None:
    c, vm_id = vm
    url = f"/v1/vms/{vm_id}/run-ts"
    assert c.post(url, json={"code": "console.log(1)"}).json()["stdout"] == "1\n"
    warm = _warm_deno_pid(c, vm_id)
    assert _sh(c, vm_id, f"ps -o user=,ni= -p {warm}").split() == ["user", "19"]  # waits as the exec user
    code = "console.log(Deno.pid); result.set({ ok: true })"
    body = c.post(url, json={"code": code}).json()
    assert body["stdout"] == f"{warm}\n" and body["result"] == {"ok": True}, body  # the warm one ran it
    assert _sh(c, vm_id, f"test -d /proc/{warm} || echo gone") == "gone\n"  # one run each
    # another command line (env, args) starts cold and gets its own warm Deno for next time
    body = c.post(url, json={"code": "console.log(Deno.args[0])", "args": ["x"], "env": ["K=v"]}).json()
    assert body["stdout"] == "x\n", body
    again = _warm_deno_pid(c, vm_id)
    body = c.post(url, json={"code": "console.log(Deno.pid, Deno.args[0])", "args": ["x"], "env": ["K=v"]}).json()
    assert body["stdout"] == f"{again} x\n", body


def test_upload_download_roundtrip(vm: tuple[httpx.Client, str]) -> None:
    c, vm_id = vm
    data = targz(
        [("file", "hello.txt", "hello world\n"), ("dir", "sub", b""), ("file", "sub/x.bin", bytes(range(256)))]
    )
    r = c.post(f"/v1/vms/{vm_id}/files/upload", params={"dest": "/workspace/project"}, content=data, headers=GZ)
    assert r.status_code == 204, r.text
    assert _sh(c, vm_id, "cat /workspace/project/hello.txt; stat -c %u:%g /workspace/project/sub/x.bin") == (
        "hello world\n1000:1000\n"
    )
    r = c.get(f"/v1/vms/{vm_id}/files/download", params={"path": "/workspace/project"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    got = members(r.content)
    assert got["hello.txt"] == b"hello world\n" and got["sub/x.bin"] == bytes(range(256))
    # a larger, incompressible upload streams through in several chunks
    blob = bytes(i * 7919 % 251 for i in range(3 * 1024 * 1024))
    r = c.post(
        f"/v1/vms/{vm_id}/files/upload",
        params={"dest": "/workspace/big"},
        content=targz([("file", "blob", blob)]),
        headers=GZ,
    )
    assert r.status_code == 204
    assert _sh(c, vm_id, "sha256sum < /workspace/big/blob").split()[0] == __import__("hashlib").sha256(blob).hexdigest()
    r = c.get(f"/v1/vms/{vm_id}/files/download", params={"path": "/workspace/big"})
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        f = tar.extractfile("blob")
        assert f is not None and f.read() == blob


@pytest.mark.parametrize(
    ("entries", "dest", "status"),
    [
        ([("file", "ok.txt", "x"), ("symlink", "evil", "/etc/shadow")], "/workspace/u", 400),
        ([("file", "ok.txt", "x"), ("hardlink", "evil", "/etc/shadow")], "/workspace/u", 400),
        ([("file", "/etc/cron.d/evil", "x")], "/workspace/u", 400),
        ([("file", "ok.txt", "x"), ("file", "../../etc/evil", "x")], "/workspace/u", 400),
        ([("file", "ok.txt", "x")], "/etc", 400),
        ([("file", "ok.txt", "x")], "/workspace/../etc", 400),
    ],
)
def test_upload_rejections_write_nothing(
    vm: tuple[httpx.Client, str], entries: list[tuple[str, str, bytes | str]], dest: str, status: int
) -> None:
    c, vm_id = vm
    listing = "find /workspace /etc /tmp -mindepth 1 -printf '%p %s %T@\\n' 2>/dev/null | sort | md5sum"
    before = _sh(c, vm_id, listing)
    r = c.post(f"/v1/vms/{vm_id}/files/upload", params={"dest": dest}, content=targz(entries), headers=GZ)
    assert r.status_code == status, r.text
    assert r.json()["message"]
    assert _sh(c, vm_id, listing) == before


def test_upload_limits(vm: tuple[httpx.Client, str]) -> None:
    c, vm_id = vm
    url = f"/v1/vms/{vm_id}/files/upload"
    r = c.post(url, params={"dest": "/workspace"}, content=b"\x1f\x8b" + bytes(11 * 1024 * 1024), headers=GZ)
    assert r.status_code == 413
    # a 2 GiB decompression bomb on a 1 GiB disk: refused, nothing left behind, disk not filled
    r = c.post(url, params={"dest": "/workspace/bomb"}, content=bomb(2 * 1024 * 1024 * 1024), headers=GZ)
    assert r.status_code == 413, r.text
    assert "expands beyond" in r.json()["message"]
    assert _sh(c, vm_id, "ls -A /workspace | grep -c -e bomb -e sheesh-upload || true") == "0\n"
    used = int(_sh(c, vm_id, "df --output=pcent / | tail -1").strip().rstrip("%"))
    assert used < 80
    r = c.post(url, params={"dest": "/workspace"}, content=b"not gzip at all", headers=GZ)
    assert r.status_code == 400 and "tar.gz" in r.json()["message"]
    r = c.get(f"/v1/vms/{vm_id}/files/download", params={"path": "/workspace/nothing"})
    assert r.status_code == 404


def test_logs(vm: tuple[httpx.Client, str]) -> None:
    c, vm_id = vm
    r = c.get(f"/v1/vms/{vm_id}/logs", params={"type": "firecracker.log", "tail": 1000})
    assert r.status_code == 200
    lines = r.json()["lines"]
    assert any("sheesh-agent: serving" in ln for ln in lines)
    r = c.get(f"/v1/vms/{vm_id}/logs", params={"type": "firecracker.log", "tail": 1})
    assert len(r.json()["lines"]) == 1
    r = c.get(f"/v1/vms/{vm_id}/logs", params={"type": "firecracker.stderr.log"})
    assert r.status_code == 200 and isinstance(r.json()["lines"], list)
