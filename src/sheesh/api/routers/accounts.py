"""Users (/v1/users), API keys (/v1/api-keys), and rerobots-style token revocation (/revoke, /purge)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictStr, field_validator

from sheesh.api.bodies import validated
from sheesh.api.deps import (
    AdminDep,
    PrincipalDep,
    ServicesDep,
    clear_session_cookie,
    client_ip,
    principal_of,
    set_session_cookie,
)
from sheesh.api.karma import Codec, karma_surface, read_body, respond
from sheesh.api.rerobots import rerobots_surface
from sheesh.api.routers.vms import ERRORS
from sheesh.api.schemas import Body, iso
from sheesh.errors import ForbiddenError, InvalidInputError
from sheesh.models import ApiKey, Role, User

router = APIRouter(tags=["accounts"], responses=ERRORS)
_USERNAME = re.compile(r"^[a-z][a-z0-9_.-]{2,63}$")


class UserOut(BaseModel):
    id: str
    username: str
    role: str
    createdAt: str
    totpEnabled: bool

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            username=user.username,
            role=user.role.value,
            createdAt=iso(user.created_at),
            totpEnabled=user.totp_enabled,
        )


class CreateUserBody(Body):
    username: Annotated[StrictStr, Field(description="3-64 chars: a-z, 0-9, _ . -, starting with a letter")]
    password: Annotated[StrictStr, Field(min_length=12, max_length=256)]
    role: Role = Role.USER

    @field_validator("username")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _USERNAME.match(value):
            raise ValueError("username must be 3-64 characters of a-z, 0-9, _ . - starting with a letter")
        return value


class ApiKeyOut(BaseModel):
    id: str
    label: str
    createdAt: str
    expiresAt: str | None = None
    sha256: str
    key: str | None = Field(default=None, description="The key itself: returned once, at creation")

    @classmethod
    def of(cls, key: ApiKey, plaintext: str | None = None) -> ApiKeyOut:
        return cls(
            id=key.id,
            label=key.label,
            createdAt=iso(key.created_at),
            expiresAt=iso(key.expires_at) if key.expires_at else None,
            sha256=key.key_hash,
            key=plaintext,
        )


class CreateKeyBody(Body):
    label: Annotated[StrictStr, Field(min_length=1, max_length=128)] = "api"
    expires_at: Annotated[datetime | None, Field(alias="expiresAt", description="ISO 8601, with time zone")] = None

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("expiresAt needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            raise ValueError("expiresAt is out of range") from None
        if utc.year > MAX_EXPIRY_YEAR:
            raise ValueError(f"expiresAt must be before the year {MAX_EXPIRY_YEAR + 1}")
        return utc


MAX_EXPIRY_YEAR = 9998


class PurgeBody(Body):
    username: StrictStr
    password: StrictStr


@router.get("/v1/users/me", summary="The caller")
async def me(principal: PrincipalDep, svc: ServicesDep) -> UserOut:
    return UserOut.of(svc.accounts.user(principal.user_id))


@router.get("/v1/users", summary="List users (admin)")
async def list_users(_: AdminDep, svc: ServicesDep) -> list[UserOut]:
    return [UserOut.of(u) for u in svc.accounts.list_users()]


@router.post("/v1/users", status_code=201, summary="Create a user (admin)")
async def create_user(body: CreateUserBody, request: Request, _: AdminDep, svc: ServicesDep) -> UserOut:
    create = svc.accounts.create_user
    return UserOut.of(await svc.hashing.run(client_ip(request), create, body.username, body.password, body.role))


class UserPatchBody(Body):
    role: Role


@router.patch("/v1/users/{user_id}", summary="Change a user's role (admin; the last admin stays one)")
async def patch_user(user_id: str, body: UserPatchBody, _: AdminDep, svc: ServicesDep) -> UserOut:
    return UserOut.of(svc.accounts.set_role(user_id, body.role))


@router.delete("/v1/users/{user_id}", status_code=204, summary="Delete a user and their API keys (admin)")
async def delete_user(user_id: str, principal: AdminDep, svc: ServicesDep) -> Response:
    svc.accounts.delete_user(principal.user_id, user_id)
    return Response(status_code=204)


@router.get("/v1/api-keys", summary="List the caller's API keys")
async def list_keys(principal: PrincipalDep, svc: ServicesDep) -> list[ApiKeyOut]:
    return [ApiKeyOut.of(k) for k in svc.auth.list_keys(principal.user_id)]


@router.post("/v1/api-keys", status_code=201, summary="Create an API key (the key is shown only in this response)")
async def create_key(principal: PrincipalDep, svc: ServicesDep, body: CreateKeyBody | None = None) -> ApiKeyOut:
    body = body or CreateKeyBody()
    key, plaintext = svc.auth.create_key(principal.user_id, body.label, body.expires_at)
    return ApiKeyOut.of(key, plaintext)


@router.delete("/v1/api-keys/{key_id}", status_code=204, summary="Delete an API key")
async def delete_key(key_id: str, principal: PrincipalDep, svc: ServicesDep) -> Response:
    svc.auth.delete_key(principal, key_id)
    return Response(status_code=204)


@router.post(
    "/revoke/{sha256}",
    dependencies=[Depends(rerobots_surface)],
    summary="Revoke the API key with this SHA-256 (a key can revoke itself)",
)
async def revoke(sha256: str, principal: PrincipalDep, svc: ServicesDep) -> JSONResponse:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise InvalidInputError("expected the hex SHA-256 of the token")
    svc.auth.revoke(principal, sha256)
    return JSONResponse({"revoked": sha256.lower()})


@router.post(
    "/purge",
    dependencies=[Depends(rerobots_surface)],
    summary="Delete all API keys of the user (username+password, or a token)",
)
async def purge(request: Request, svc: ServicesDep, body: PurgeBody | None = None) -> JSONResponse:
    if body is not None:  # the user and password pair wins over any token; same lockout as a login
        check = svc.accounts.check_password
        user_id = (await svc.hashing.run(client_ip(request), check, body.username, body.password)).id
    else:
        user_id = principal_of(request, svc).user_id
    return JSONResponse({"purged": svc.auth.purge(user_id)})


class LoginBody(Body):
    username: StrictStr
    password: StrictStr
    otp: StrictStr | None = None


async def _login(svc: ServicesDep, request: Request, body: LoginBody) -> User:
    login = svc.accounts.login
    return await svc.hashing.run(client_ip(request), login, body.username, body.password, body.otp)


class OtpBody(Body):
    otp: StrictStr


class TotpOut(BaseModel):
    secret: str
    otpauthUri: str


class PasswordBody(Body):
    current_password: Annotated[StrictStr, Field(alias="currentPassword")]
    new_password: Annotated[StrictStr, Field(alias="newPassword", min_length=12, max_length=256)]
    otp: StrictStr | None = None


@router.post("/v1/auth/totp", status_code=201, summary="Start 2FA enrolment: returns the TOTP secret")
async def totp_enrol(principal: PrincipalDep, svc: ServicesDep) -> TotpOut:
    secret, uri = svc.accounts.totp_enrol(principal.user_id)
    return TotpOut(secret=secret, otpauthUri=uri)


@router.post("/v1/auth/totp/verify", status_code=204, summary="Finish enrolment with a current passcode: 2FA on")
async def totp_verify(body: OtpBody, principal: PrincipalDep, svc: ServicesDep) -> Response:
    svc.accounts.totp_verify(principal.user_id, body.otp)
    return Response(status_code=204)


@router.delete("/v1/auth/totp", status_code=204, summary="Turn 2FA off (needs a current passcode)")
async def totp_disable(body: OtpBody, principal: PrincipalDep, svc: ServicesDep) -> Response:
    svc.accounts.totp_disable(principal.user_id, body.otp)
    return Response(status_code=204)


@router.post("/v1/users/me/password", status_code=204, summary="Change the password (2FA-protected)")
async def change_password(body: PasswordBody, request: Request, principal: PrincipalDep, svc: ServicesDep) -> Response:
    args = (principal.user_id, body.current_password, body.new_password, body.otp)
    await svc.hashing.run(client_ip(request), svc.accounts.change_password, *args)
    return Response(status_code=204)


KarmaCodec = Annotated[Codec, Depends(karma_surface)]


@router.post(
    "/auth",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": LoginBody.model_json_schema()}}}
    },
    summary="Log in (karma.run): the response is a signature valid 15 minutes",
)
async def karma_login(request: Request, svc: ServicesDep, codec: KarmaCodec) -> Response:
    """The body is ``{"username", "password"}`` in the ``X-Karma-Codec`` encoding (json or msgpack), whatever
    the Content-Type; the answer is the signature, a string in the same encoding."""
    body = validated(LoginBody, await read_body(request, codec))
    user = await _login(svc, request, body)
    return respond(codec, svc.sessions.issue(user.id, "signature", svc.settings.signature_ttl_s))


@router.get("/auth", summary="Renew a signature (send the current one as X-Karma-Signature)")
async def karma_refresh(request: Request, svc: ServicesDep, codec: KarmaCodec) -> Response:
    token = request.headers.get("x-karma-signature")
    if not token:
        raise ForbiddenError("X-Karma-Signature header required")
    claims = svc.sessions.verify(token, "signature")
    if svc.store.get_user(claims.user_id) is None:
        raise ForbiddenError("user no longer exists")
    return respond(codec, svc.sessions.issue(claims.user_id, "signature", svc.settings.signature_ttl_s))


@router.post("/auth/login", status_code=204, summary="Log in to the admin UI: sets the rds_session cookie")
async def cookie_login(body: LoginBody, request: Request, svc: ServicesDep) -> Response:
    user = await _login(svc, request, body)
    response = Response(status_code=204)
    set_session_cookie(response, svc, user.id)
    return response


@router.post("/auth/logout", status_code=204, summary="Clear the rds_session cookie")
async def cookie_logout() -> Response:
    response = Response(status_code=204)
    clear_session_cookie(response)
    return response
