"""Benchmark: full VMs and the node's media endpoints. Prints numbers.

- full VM create -> first exec (cold boot of the sheesh kernel on q35 with SeaBIOS)
- /uploadIso and /downloadIso throughput of an ISO of --iso-mb MB (loopback HTTP for the download)
- /cloudInit of a qcow2 image with --image-mb MB of data: download + convert + seed + restart, end to end
Usage: .venv/bin/python bench/media.py [--iso-mb 256] [--image-mb 256]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import running_server
from tests.media import http_server, make_disk, make_iso, media_conversation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iso-mb", type=int, default=256)
    parser.add_argument("--image-mb", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sheesh-media-") as tmp:
        root = Path(tmp)
        iso = make_iso(root / "bench.iso", "BENCH-ISO", pad_mb=args.iso_mb)
        # incompressible data so the download and the conversion are real work
        image = make_disk(root / "bench.qcow2", "BENCH-DISK", size_mb=64, fill_mb=args.image_mb)
        iso_bytes = iso.read_bytes()
        env = {"SHEESH_MEDIA_MAX_BYTES": str(16 * 1024**3), "SHEESH_MEDIA_BLOCKED_NETWORKS": "[]"}  # served on loopback
        with running_server(**env) as server, server.client() as c, http_server(root) as base:
            node = f"ws://127.0.0.1:{server.node_port}"
            t0 = time.perf_counter()
            vm = (
                c.post("/v1/vms", json={"cpu": 1, "memMb": 512, "allowIps": [], "kind": "full", "diskSizeMb": 2048})
                .raise_for_status()
                .json()["id"]
            )
            c.post(f"/v1/vms/{vm}/exec", json={"cmd": "true"}).raise_for_status()
            print(f"full VM create -> first exec: {(time.perf_counter() - t0) * 1000:.0f} ms")

            def token() -> str:
                return str(c.get(f"/v1/vms/{vm}/agentToken").raise_for_status().json()["token"])

            mb = len(iso_bytes) / 1e6
            t0 = time.perf_counter()
            _, code = asyncio.run(media_conversation(f"{node}/uploadIso?token={token()}", iso_bytes))
            took = time.perf_counter() - t0
            print(f"uploadIso {mb:.0f} MB: {took:.2f} s ({mb / took:.0f} MB/s), close {code}")
            t0 = time.perf_counter()
            messages, code = asyncio.run(
                media_conversation(f"{node}/downloadIso?token={token()}&isoUrl={base}/bench.iso")
            )
            progress = sum(m.startswith("!PR") for m in messages)
            took = time.perf_counter() - t0
            print(
                f"downloadIso {mb:.0f} MB: {took:.2f} s ({mb / took:.0f} MB/s), {progress} progress messages, "
                f"close {code}"
            )
            t0 = time.perf_counter()
            messages, code = asyncio.run(
                media_conversation(f"{node}/cloudInit?token={token()}&imageUrl={base}/bench.qcow2")
            )
            progress = sum(m.startswith("!PR") for m in messages)
            took = time.perf_counter() - t0
            size = image.stat().st_size / 1e6
            print(
                f"cloudInit {size:.0f} MB qcow2 (download, convert, seed, restart): {took:.2f} s, "
                f"{progress} progress messages, close {code}"
            )
            c.delete(f"/v1/vms/{vm}")


if __name__ == "__main__":
    main()
