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
    views = await svc.nodes.views()
    svc.metrics.nodes = [(v.record.id, v.capacity.vcpus, v.capacity.mem_mb) for v in views]
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
