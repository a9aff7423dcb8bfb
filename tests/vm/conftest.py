"""Fixtures for tests that boot real QEMU VMs with the built-in guest image."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheesh.config import Settings
from sheesh.image.builder import BuiltImage, ImageBuilder
from tests.server import ServerProcess, running_server


@pytest.fixture(scope="session")
def guest_image() -> BuiltImage:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("QEMU is not installed: run scripts/setup.sh")
    return ImageBuilder(Settings().resolved_image_dir()).build()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    """One server for a whole module (tests that only need a running VM, not a fresh manager)."""
    with running_server(tmp_path_factory.mktemp("shared") / "data", guest_image.path.parent.parent) as srv:
        yield srv


@pytest.fixture
def server(tmp_path: Path, guest_image: BuiltImage) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "data", guest_image.path.parent.parent) as srv:
        yield srv
