"""Fixtures of the integration tests: the whole stack in-process on the fake VMM (``vmm_stack``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from sheesh.vmm.fake import FakeDriver
from tests.fakes import serving
from tests.vmmstack import kill_leftovers, vmm_services


@pytest.fixture
def vmm_stack(settings: Settings) -> Iterator[tuple[TestClient, FakeDriver]]:
    """API, control plane and node agent in-process; "VMs" are guest agent processes (the fake VMM)."""
    driver = FakeDriver()
    try:
        with TestClient(create_app(vmm_services(settings, driver))) as client:
            yield client, driver
    finally:
        kill_leftovers(settings.vms_dir)


@pytest.fixture
def served_url(settings: Settings) -> Iterator[str]:
    """The same stack behind a real uvicorn on a loopback port (HTTP and WebSockets): its base URL."""
    try:
        with serving(create_app(vmm_services(settings, FakeDriver()))) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        kill_leftovers(settings.vms_dir)
