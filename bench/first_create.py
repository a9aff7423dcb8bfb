"""Benchmark: the first create after a fresh start. The service builds the templates of
``SHEESH_TEMPLATE_SHAPES`` right after it starts; this times, from the moment the server process is started on
an empty data dir, how long until that template is ready (from the service's log), then the first create ->
first exec of that shape, next to its floor measured in the same run: a create -> first exec of another shape,
which has no template and boots. Prints numbers.

Usage: .venv/bin/python bench/first_create.py
"""

from __future__ import annotations

import time

import httpx
from _common import running_server

SHAPE = {"cpu": 1, "memMb": 256, "allowIps": []}
OTHER = {**SHAPE, "memMb": 320}


def _create_exec_s(c: httpx.Client, body: dict[str, object]) -> tuple[float, str]:
    t0 = time.perf_counter()
    vm = c.post("/v1/vms", json=body).raise_for_status().json()
    c.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).raise_for_status()
    elapsed = time.perf_counter() - t0
    c.delete(f"/v1/vms/{vm['id']}").raise_for_status()
    return elapsed, str(vm["provisionMode"])


def main() -> None:
    started = time.perf_counter()
    with running_server(SHEESH_TEMPLATES="true", SHEESH_TEMPLATE_SHAPES="1:256") as server, server.client() as c:
        up_s = time.perf_counter() - started
        deadline = time.monotonic() + 300
        while "ready on" not in server.log.read_text():
            assert time.monotonic() < deadline, "no template was built after start"
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        first_s, mode = _create_exec_s(c, SHAPE)
        floor_s, floor_mode = _create_exec_s(c, OTHER)
    print(f"service answering {up_s:.1f} s after start; template of 1 vCPU/256 MiB ready {ready_s:.1f} s after start")
    print(
        f"first create -> first exec after that: {first_s * 1000:.0f} ms ({mode}); floor (a shape without a "
        f"template, booted, same run): {floor_s * 1000:.0f} ms ({floor_mode}); ratio {first_s / floor_s:.2f}"
    )


if __name__ == "__main__":
    main()
