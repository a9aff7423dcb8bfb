"""The UI's images page: the list for everyone; for admins, new image records, kernel and rootfs uploads (the
browser PUTs the file straight to the REST API's upload route, with the CSRF token, and shows its progress),
the default image and deletion."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from sheesh.api.deps import ServicesDep
from sheesh.api.routers.images import CreateImageBody
from sheesh.api.ui.forms import form_of, validated_form
from sheesh.api.ui.render import redirect, render
from sheesh.api.ui.routing import UiRoute
from sheesh.api.ui.session import AdminSessionDep, SessionDep
from sheesh.control.images import image_ready

router = APIRouter(prefix="/ui/images", route_class=UiRoute, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
async def images_page(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    images = [(s.image, image_ready(s.path)) for s in svc.images.list_images()]
    return render(request, "images.html", session, images=images)


@router.post("")
async def create_image(request: Request, _: AdminSessionDep, svc: ServicesDep) -> Response:
    form = await form_of(request)
    fields = {"name": form.get("name") or "", "description": form.get("description") or ""}
    body = validated_form(CreateImageBody, fields)
    svc.images.create(body.name, body.description)
    return redirect(request, "/ui/images")


@router.post("/{image_id}/set-default")
async def set_default(image_id: str, request: Request, _: AdminSessionDep, svc: ServicesDep) -> Response:
    svc.images.set_default(image_id)
    return redirect(request, "/ui/images")


@router.post("/{image_id}/delete")
async def delete_image(image_id: str, request: Request, _: AdminSessionDep, svc: ServicesDep) -> Response:
    svc.images.delete(image_id)
    return redirect(request, "/ui/images")
