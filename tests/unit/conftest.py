"""Fixtures of the unit tests."""

from __future__ import annotations

import selectors

import pytest


@pytest.fixture
def select_waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeout of every ``select`` of the selectors made from here on (``selectors.DefaultSelector``): how
    often, and how long, a loop waits."""
    waits: list[float | None] = []

    class Counting(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            waits.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(selectors, "DefaultSelector", Counting)
    return waits
