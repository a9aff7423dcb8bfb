"""VMs by state over time for the list page's chart: counts sampled (at most every ``interval_s``) when the
list is refreshed, kept for ``window_s``, drawn as one SVG polyline per state."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from sheesh.models import Vm, VmState

COLORS = {
    VmState.RUNNING: "#5ad17a",
    VmState.PAUSED: "#f5c451",
    VmState.STOPPED: "#9aa3b2",
    VmState.ERROR: "#ff6b6b",
}
OTHER = "#5aa9ff"
WIDTH = 600
HEIGHT = 70


@dataclass(frozen=True)
class Series:
    state: str
    color: str
    points: str
    now: int


@dataclass(frozen=True)
class Chart:
    width: int
    series: list[Series]


class StateHistory:
    def __init__(self, interval_s: float = 10, window_s: float = 3600) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.samples: deque[tuple[float, Counter[str]]] = deque()

    def sample(self, vms: Sequence[Vm], now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.samples and now - self.samples[-1][0] < self.interval_s:
            return
        self.samples.append((now, Counter(vm.state.value for vm in vms)))
        while self.samples and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()

    def chart(self, vms: Sequence[Vm], now: float | None = None) -> Chart:
        now = time.time() if now is None else now
        self.sample(vms, now)
        states = sorted({s for _, counts in self.samples for s in counts})
        top = max((c for _, counts in self.samples for c in counts.values()), default=1) or 1
        series = []
        samples = list(self.samples)
        if len(samples) == 1:  # one point draws no line: hold it from the window's start
            samples.insert(0, (now - self.window_s, samples[0][1]))
        for state in states:
            points = " ".join(
                f"{WIDTH * (1 - (now - t) / self.window_s):.1f},{HEIGHT - 4 - (HEIGHT - 8) * counts[state] / top:.1f}"
                for t, counts in samples
            )
            color = next((c for s, c in COLORS.items() if s.value == state), OTHER)
            series.append(Series(state, color, points, self.samples[-1][1][state]))
        return Chart(WIDTH, series)
