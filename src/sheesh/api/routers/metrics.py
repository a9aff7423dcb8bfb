"""``GET /metrics``: the control plane's Prometheus metrics (admins; Prometheus sends the API key as a bearer
token)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sheesh.api.deps import AdminDep, ServicesDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (admin)", response_class=Response)
async def metrics(_: AdminDep, svc: ServicesDep) -> Response:
    status = await svc.node.status()
    svc.metrics.nodes = [(status.name, status.capacity.vcpus, status.capacity.mem_mb)]
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
