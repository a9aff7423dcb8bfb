"""Fixtures of the unit tests."""

from __future__ import annotations

import select
import selectors

import pytest


@pytest.fixture
def select_waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeout of every ``select`` of the selectors made from here on (``selectors.DefaultSelector``) and of
    every ``select.poll`` object's ``poll``, in seconds: how often, and how long, a loop waits."""
    waits: list[float | None] = []

    class Counting(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            waits.append(timeout)
            return super().select(timeout)

    class CountingPoll:  # ``select.poll``, its timeout in milliseconds
        def __init__(self) -> None:
            self._poll = real_poll()

        def register(self, fd: int, mask: int = select.POLLIN) -> None:
            self._poll.register(fd, mask)

        def unregister(self, fd: int) -> None:
            self._poll.unregister(fd)

        def poll(self, timeout_ms: float | None = None) -> list[tuple[int, int]]:
            waits.append(None if timeout_ms is None else timeout_ms / 1000)
            return self._poll.poll(timeout_ms)

    real_poll = select.poll
    monkeypatch.setattr(selectors, "DefaultSelector", Counting)
    monkeypatch.setattr(select, "poll", CountingPoll)
    return waits
