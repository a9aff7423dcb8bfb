"""Benchmark: API throughput and latency of `GET /v1/vms` (with `--vms` VMs listed) and `GET /v1/vms/:id`,
next to their floor measured in the same run: the same load generator against a bare uvicorn app, started with
the options `sheesh serve` uses, answering a JSON body of the same size (HTTP stack and event loop, no sheesh).

The load generator is asyncio over keep-alive sockets (`--connections` of them, one request in flight each), in
this process, for `--duration-s` per target; the server's limits are lifted. VMs come from the fake VMM so only the
control plane is measured. Then it checks the exec path does not serialize: an exec of `sleep 2` on one VM while
another VM's execs of `true` run.
Usage: .venv/bin/python bench/api.py [--vms 100] [--connections 20] [--duration-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import exec_times, percentile, running_server
from tests.server import free_port, stop_process, wait_for


async def _connection(port: int, request: bytes, until: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != b"200":
                errors.append(status.decode())
    finally:
        writer.close()


def load(
    port: int, path: str, headers: dict[str, str], connections: int, duration_s: float
) -> tuple[float, list[float], list[str]]:
    """Requests per second, latencies and non-200 statuses of ``connections`` keep-alive loops on ``path``."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", **headers}.items())
    request = f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> float:
        t0 = time.perf_counter()
        until = t0 + duration_s
        await asyncio.gather(*(_connection(port, request, until, latencies, errors) for _ in range(connections)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(run())
    return len(latencies) / elapsed, latencies, errors


BARE_APP = textwrap.dedent(
    """
    import sys, uvicorn
    body = open(sys.argv[2], "rb").read()
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    sys.path.insert(0, sys.argv[3])
    from sheesh.cli.serving import HTTP_OPTIONS  # what `sheesh serve` runs uvicorn with (TLS aside)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), **HTTP_OPTIONS)
    """
)


class BareServer:
    """A uvicorn process answering ``body`` to every request: the floor."""

    def __init__(self, body: bytes, tmp: Path) -> None:
        self.port = free_port()
        self.body_file = tmp / f"body-{self.port}.json"
        self.body_file.write_bytes(body)
        src = str(Path(__file__).resolve().parent.parent / "src")
        argv = [sys.executable, "-c", BARE_APP, str(self.port), str(self.body_file), src]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> BareServer:
        wait_for("the bare server", lambda: _answers(self.port))
        return self

    def __exit__(self, *_: object) -> None:
        stop_process(self.proc)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    except httpx.HTTPError:
        return False


def report(what: str, target: tuple[int, str, dict[str, str]], floor_port: int, args: argparse.Namespace) -> None:
    """``target`` (port, path, headers) under load, then the bare server on ``floor_port``."""
    port, path, headers = target
    load(port, path, headers, args.connections, 1)  # warm up both
    load(floor_port, "/", {}, args.connections, 1)
    rps, lat, errors = load(port, path, headers, args.connections, args.duration_s)
    floor_rps, floor_lat, _ = load(floor_port, "/", {}, args.connections, args.duration_s)
    p50, p99 = percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000
    f50, f99 = percentile(floor_lat, 0.5) * 1000, percentile(floor_lat, 0.99) * 1000
    print(
        f"{what}: {rps:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f" | floor (bare uvicorn, same body): {floor_rps:.0f} req/s, p50 {f50:.1f} ms, p99 {f99:.1f} ms"
        f" | {rps / floor_rps:.2f}x the floor's throughput" + (f" | errors: {sorted(set(errors))}" if errors else "")
    )


def exec_isolation(c: httpx.Client, slow_vm: str, fast_vm: str) -> None:
    """One long exec must not delay another VM's exec."""

    def fast_execs() -> list[float]:
        return exec_times(c, fast_vm, 10)

    alone = fast_execs()
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(c.post, f"/v1/vms/{slow_vm}/exec", json={"cmd": "sleep 2"}) for _ in range(3)]
        time.sleep(0.2)
        during = fast_execs()
        for f in slow:
            f.result().raise_for_status()
    a50, d50 = percentile(alone, 0.5) * 1000, percentile(during, 0.5) * 1000
    print(f"exec `true` on one VM: p50 {a50:.1f} ms alone, {d50:.1f} ms while 3 execs of `sleep 2` run on another VM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--duration-s", type=float, default=5)
    args = parser.parse_args()
    env = {"SHEESH_VMM": "fake", "SHEESH_NETWORK": "off", "SHEESH_MEM_OVERCOMMIT": "4"}
    with running_server(**env) as srv, srv.client(timeout=300) as c:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            body = {"cpu": 1, "memMb": 256, "allowIps": []}
            made = list(pool.map(lambda _: c.post("/v1/vms", json=body), range(args.vms)))
        ids = [r.raise_for_status().json()["id"] for r in made]
        print(f"{args.vms} fake VMs created in {time.perf_counter() - t0:.1f} s")
        headers = {"X-API-Key": srv.api_key}
        listing = c.get("/v1/vms").content
        one = c.get(f"/v1/vms/{ids[0]}").content
        assert len(json.loads(listing)) == args.vms
        tmp = srv.data_dir
        with BareServer(listing, tmp) as bare_list, BareServer(one, tmp) as bare_one:
            listed = f"GET /v1/vms ({args.vms} VMs, {len(listing)} B)"
            report(listed, (srv.port, "/v1/vms", headers), bare_list.port, args)
            report(f"GET /v1/vms/:id ({len(one)} B)", (srv.port, f"/v1/vms/{ids[0]}", headers), bare_one.port, args)
        exec_isolation(c, ids[0], ids[1])


if __name__ == "__main__":
    main()
