"""The UI's login and logout, and the pages of the account: API keys, password and 2FA enrolment (with a QR
code), users and roles (admins only), snapshots. Same services and body schemas as the REST routes."""

from __future__ import annotations

import segno
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from sheesh.api.deps import ServicesDep, clear_session_cookie, client_ip, owned_snapshot_id, set_session_cookie
from sheesh.api.routers.accounts import CreateKeyBody, CreateUserBody, LoginBody, PasswordBody, UserPatchBody
from sheesh.api.ui.forms import form_of, validated_form
from sheesh.api.ui.render import redirect, render
from sheesh.api.ui.routing import UiRoute
from sheesh.api.ui.session import AdminSessionDep, SessionDep, session_of
from sheesh.errors import SheeshError
from sheesh.models import Role

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)


@router.get("")
async def ui_root(request: Request, svc: ServicesDep) -> Response:
    return redirect(request, "/ui/vms" if session_of(request, svc) else "/ui/login")


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, svc: ServicesDep) -> Response:
    """The cookie login of ``POST /auth/login`` (same lockout and 2FA), from the login form."""
    form = await form_of(request)
    username = str(form.get("username") or "")
    try:
        fields = {"username": username, "password": form.get("password") or "", "otp": form.get("otp") or None}
        body = validated_form(LoginBody, fields)
        user = await svc.hashing.run(client_ip(request), svc.accounts.login, body.username, body.password, body.otp)
    except SheeshError as exc:
        return render(request, "login.html", None, exc.status_code, message=exc.message, username=username)
    response = redirect(request, "/ui/vms")
    set_session_cookie(response, svc, user.id)
    return response


@router.post("/logout")
async def logout(request: Request, _: SessionDep) -> Response:
    response = redirect(request, "/ui/login")
    clear_session_cookie(response)
    return response


@router.get("/snapshots", response_class=HTMLResponse)
async def snapshots_page(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    snaps = [s for s in svc.vms.list_snapshots() if session.principal.can_see(s.owner_id)]
    return render(request, "snapshots.html", session, snapshots=snaps)


@router.post("/snapshots/{snapshot_id}/delete")
async def delete_snapshot(snapshot_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> Response:
    await svc.vms.delete_snapshot(await owned_snapshot_id(snapshot_id, session.principal, svc))
    return redirect(request, "/ui/snapshots")


@router.get("/keys", response_class=HTMLResponse)
async def keys_page(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    return render(request, "keys.html", session, keys=svc.auth.list_keys(session.principal.user_id))


@router.post("/keys", response_class=HTMLResponse)
async def create_key(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    form = await form_of(request)
    body = validated_form(CreateKeyBody, {"label": form.get("label") or "api"})
    _, plaintext = svc.auth.create_key(session.principal.user_id, body.label, body.expires_at)
    keys = svc.auth.list_keys(session.principal.user_id)
    return render(request, "keys.html", session, keys=keys, created=plaintext)


@router.post("/keys/{key_id}/delete")
async def delete_key(key_id: str, request: Request, session: SessionDep, svc: ServicesDep) -> Response:
    svc.auth.delete_key(session.principal, key_id)
    return redirect(request, "/ui/keys")


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    return render(request, "account.html", session, user=svc.accounts.user(session.principal.user_id))


@router.post("/account/password", response_class=HTMLResponse)
async def change_password(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    form = await form_of(request)
    fields = {
        "currentPassword": form.get("currentPassword") or "",
        "newPassword": form.get("newPassword") or "",
        "otp": form.get("otp") or None,
    }
    body = validated_form(PasswordBody, fields)
    args = (session.principal.user_id, body.current_password, body.new_password, body.otp)
    await svc.hashing.run(client_ip(request), svc.accounts.change_password, *args)
    return render(request, "_notice.html", session, message="password changed")


@router.post("/account/totp", response_class=HTMLResponse)
async def totp_enrol(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    """Start enrolment: the secret as text and as a QR code (SVG, drawn here) of its otpauth:// URI."""
    secret, uri = svc.accounts.totp_enrol(session.principal.user_id)
    qr = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return render(request, "_totp.html", session, secret=secret, uri=uri, qr=qr)


@router.post("/account/totp/verify", response_class=HTMLResponse)
async def totp_verify(request: Request, session: SessionDep, svc: ServicesDep) -> HTMLResponse:
    form = await form_of(request)
    svc.accounts.totp_verify(session.principal.user_id, str(form.get("otp") or ""))
    return render(request, "_notice.html", session, message="2FA is on: logins now need a passcode")


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, session: AdminSessionDep, svc: ServicesDep) -> HTMLResponse:
    return render(request, "users.html", session, users=svc.accounts.list_users(), roles=list(Role))


@router.post("/users", response_class=HTMLResponse)
async def create_user(request: Request, session: AdminSessionDep, svc: ServicesDep) -> Response:
    form = await form_of(request)
    fields = {"username": form.get("username") or "", "password": form.get("password") or "", "role": form.get("role")}
    body = validated_form(CreateUserBody, fields)
    await svc.hashing.run(client_ip(request), svc.accounts.create_user, body.username, body.password, body.role)
    return redirect(request, "/ui/users")


@router.post("/users/{user_id}/role")
async def set_role(user_id: str, request: Request, session: AdminSessionDep, svc: ServicesDep) -> Response:
    form = await form_of(request)
    svc.accounts.set_role(user_id, validated_form(UserPatchBody, {"role": form.get("role")}).role)
    return redirect(request, "/ui/users")


@router.post("/users/{user_id}/delete")
async def delete_user(user_id: str, request: Request, session: AdminSessionDep, svc: ServicesDep) -> Response:
    svc.accounts.delete_user(session.principal.user_id, user_id)
    return redirect(request, "/ui/users")
