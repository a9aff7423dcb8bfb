"""TOTP second factor (RFC 6238, via pyotp)."""

from __future__ import annotations

import pyotp

from sheesh.errors import ForbiddenError
from sheesh.models import User

ISSUER = "sheesh"


class OtpRequiredError(ForbiddenError):
    """A 2FA-protected operation without a valid one-time passcode (HTTP 403)."""


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(user: User, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=ISSUER)


def valid(secret: str, otp: str | None) -> bool:
    return bool(otp) and pyotp.TOTP(secret).verify(str(otp).strip(), valid_window=1)


def require_otp(user: User, otp: str | None) -> None:
    """Pass when the user has no 2FA, or ``otp`` is a current passcode of theirs."""
    if not user.totp_enabled or user.totp_secret is None:
        return
    if not otp:
        raise OtpRequiredError("this operation needs a one-time passcode (2FA is on): send otp")
    if not valid(user.totp_secret, otp):
        raise OtpRequiredError("invalid one-time passcode")
