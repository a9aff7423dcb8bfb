"""The ``Server-Timing`` header of a program run (exec, run-ts, run-js): where its time went, for clients and
browsers' developer tools to show next to their own round trip.

- ``exec``: the run in the control plane, from the VM's claim to the node's answer (the HTTP request's handling
  around it is the rest of the round trip);
- ``node``: the node's call to the guest agent, from its request to the agent's reply;
- ``guest``: of that, the agent's own, from the request it read to its reply (the command's run with it).

``node`` less ``guest`` is the channel between host and guest; ``exec`` less ``node`` the control plane's part.
A metric the run's node or agent does not report is left out.
"""

from __future__ import annotations

from typing import Any

from sheesh import servertiming
from sheesh.models import GuestTiming

HEADER = servertiming.HEADER
DOC: dict[str, Any] = {
    "headers": {
        HEADER: {
            "description": "Where the run's time went, in ms: exec (control plane), node (call to the guest "
            "agent), guest (the agent's own)",
            "schema": {"type": "string"},
        }
    }
}
"""The header as the OpenAPI document describes a 200 answer's."""


def server_timing(exec_ms: float, timing: GuestTiming | None) -> str:
    """The header's value for a run that took ``exec_ms`` in the control plane and ``timing`` on its node."""
    metrics = [("exec", exec_ms, "control plane")]
    if timing is not None:
        metrics.append(("node", timing.node_ms, "node to guest agent"))
        if timing.guest_ms is not None:
            metrics.append(("guest", timing.guest_ms, "guest agent"))
    return servertiming.header(metrics)
