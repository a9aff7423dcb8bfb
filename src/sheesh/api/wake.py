"""Waking a VM's guest as soon as a request for it arrives (``Services.wake_guest``): under emulation a guest
that sat idle for more than ~20 ms runs its next request ~3 ms slower (its translated code and TLB state have
gone cold); told at once, it warms up while the control plane authenticates and checks the request.

Only a hint: it reaches guests of the embedded node whose agent is connected, never resumes a paused VM and
never fails a request. Requests over the global rate limit are refused before they get here."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from sheesh.control.services import Services

GUEST_ROUTE = re.compile(r"^/v1/vms/([^/]+)/(?:exec|run-ts|run-js|files/upload|files/download|exec/stream)$")
"""The routes whose work is done by the VM's guest agent; the VM id is the first group."""


class WakeGuest:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (match := GUEST_ROUTE.match(scope["path"])):
            self.services.wake_guest(match.group(1))
        await self.app(scope, receive, send)
