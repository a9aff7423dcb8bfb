"""Shared fixtures: isolated settings and the API on a fake node (``stack``); the admin key is
``tests.fakes.ADMIN``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sheesh.api.app import create_app
from sheesh.config import Settings
from tests.fakes import FakeStack, fake_services
from tests.postgres import Postgres, running_postgres


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(
        data_dir=tmp_path / "data",
        api_key="test-key",
        accel="tcg",
        reconcile_interval_s=0.2,
        boot_timeout_s=20,
        stop_timeout_s=5,
        templates=False,
    )


@pytest.fixture
def stack(settings: Settings) -> Iterator[FakeStack]:
    """The API on the fake node (``tests.fakes``), started: a ``TestClient``, its services and the node."""
    svc, node = fake_services(settings)
    with TestClient(create_app(svc)) as client:
        yield FakeStack(client=client, svc=svc, node=node)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for the whole run, started from the Debian binaries (see ``tests/postgres.py``)."""
    with running_postgres() as pg:
        yield pg
