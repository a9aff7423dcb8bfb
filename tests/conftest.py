"""Shared fixtures: isolated settings and a fake-VMM stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sheesh.config import Settings


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
