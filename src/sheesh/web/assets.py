"""The third-party JavaScript of the browser consoles and the web UI, fetched from npm by ``sheesh web fetch``
(setup)."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from sheesh.errors import SheeshError

PACKAGES = {"xterm": "@xterm/xterm@6.0.0", "novnc": "@novnc/novnc@1.7.0", "htmx": "htmx.org@2.0.11"}
"""Folder under the assets dir -> pinned npm package."""
KEEP = (
    "package/lib/",
    "package/css/",
    "package/core/",
    "package/vendor/",
    "package/dist/htmx.min.js",
    "package/LICENSE",
)


class AssetError(SheeshError):
    """The console assets could not be fetched."""


def assets_ready(dest: Path) -> bool:
    return all(
        (dest / name / ".version").is_file() and (dest / name / ".version").read_text() == spec
        for name, spec in PACKAGES.items()
    )


def fetch_assets(dest: Path) -> list[str]:
    """Download and unpack the pinned packages into ``dest/<name>/`` (skipping ones already there);
    returns the packages fetched."""
    if shutil.which("npm") is None:
        raise AssetError("npm is not installed (run scripts/setup.sh)")
    fetched = []
    for name, spec in PACKAGES.items():
        target = dest / name
        stamp = target / ".version"
        if stamp.is_file() and stamp.read_text() == spec:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                ["npm", "pack", "--silent", "--pack-destination", tmp, spec],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise AssetError(f"npm pack {spec} failed: {proc.stderr.strip()}")
            tgz = Path(tmp) / proc.stdout.strip().splitlines()[-1]
            staging = Path(tmp) / "out"
            with tarfile.open(tgz) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(KEEP)]
                tar.extractall(staging, members=members, filter="data")
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staging / "package", target)
            stamp.write_text(spec)
        fetched.append(spec)
    return fetched
