"""The ``Server-Timing`` header (W3C Server Timing): metrics ``name;dur=<ms>;desc="..."``, comma-separated.
The API writes it on the answers of program runs (``sheesh.api.timing``); the SDK reads it into their results."""

from __future__ import annotations

from collections.abc import Iterable

HEADER = "Server-Timing"


def header(metrics: Iterable[tuple[str, float, str]]) -> str:
    """The header's value for ``(name, ms, description)`` metrics."""
    return ", ".join(f'{name};dur={ms:.3f};desc="{desc}"' for name, ms, desc in metrics)


def durations(value: str) -> dict[str, float]:
    """The metrics of a header's value that have a duration, in ms by name (others, and malformed ones, left
    out)."""
    metrics = {}
    for metric in value.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        dur = next((p[4:] for p in params if p.startswith("dur=")), None)
        try:
            if name and dur is not None:
                metrics[name] = float(dur)
        except ValueError:
            continue
    return metrics
