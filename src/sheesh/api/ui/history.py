"""The UI's small charts. VMs by state over time for the list page: counts sampled (at most every
``interval_s``) when the list is refreshed, kept for ``window_s``, one SVG polyline per state. A VM's CPU and
memory sparklines: its node's readings, taken when its page polls them."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from sheesh.models import Vm, VmState
from sheesh.node.contract import VmUsage

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


@dataclass(frozen=True)
class Sparkline:
    points: str
    now: float
    peak: float


@dataclass(frozen=True)
class UsageChart:
    cpu_pct: Sparkline
    """Share of one core, between readings."""
    mem_mb: Sparkline


SPARK_W, SPARK_H = 160, 28


def _spark(values: list[float], floor: float) -> Sparkline:
    peak = max([floor, *values])
    step = SPARK_W / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{SPARK_H - 2 - (SPARK_H - 4) * v / peak:.1f}" for i, v in enumerate(values))
    return Sparkline(points, values[-1] if values else 0.0, peak)


class UsageHistory:
    """The last ``keep`` readings of each VM's usage (readings of a VM that stopped answering are dropped)."""

    def __init__(self, keep: int = 60) -> None:
        self.keep = keep
        self.readings: dict[str, deque[VmUsage]] = {}

    def add(self, vm_id: str, usage: VmUsage | None) -> UsageChart | None:
        if usage is None:
            self.readings.pop(vm_id, None)
            return None
        seen = self.readings.setdefault(vm_id, deque(maxlen=self.keep))
        if seen and usage.cpu_s < seen[-1].cpu_s:  # a new process (restart): its counters start again
            seen.clear()
        seen.append(usage)
        pairs = list(zip(seen, list(seen)[1:], strict=False))
        cpu = [100 * (b.cpu_s - a.cpu_s) / (b.at_s - a.at_s) for a, b in pairs if b.at_s > a.at_s] or [0.0]
        return UsageChart(cpu_pct=_spark(cpu, 5.0), mem_mb=_spark([u.mem_mb for u in seen], 1.0))

    def forget_stale(self, now_s: float, max_age_s: float = 300) -> None:
        """Drop the readings of VMs no page has polled for ``max_age_s`` (deleted VMs, closed pages)."""
        for vm_id in [v for v, seen in self.readings.items() if now_s - seen[-1].at_s > max_age_s]:
            del self.readings[vm_id]
