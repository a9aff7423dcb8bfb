"""Stateless signed sessions: karma.run-style signatures (``X-Karma-Signature``, 15 minutes, renewed by
``GET /auth``) and the admin UI's ``rds_session`` cookie. A token is ``base64url(payload).base64url(mac)``
with HMAC-SHA256 under a per-instance key kept in the data dir. The payload starts with random bytes (the
nonce), so every token's leading characters are unpredictable (Kyun's VNC password is the first 8)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sheesh.errors import ForbiddenError

NONCE_BYTES = 12


class InvalidSessionError(ForbiddenError):
    """Tampered, malformed or expired session token (HTTP 403)."""


class CsrfError(ForbiddenError):
    """A state-changing request made with the session cookie without its CSRF token (HTTP 403)."""


@dataclass(frozen=True)
class SessionClaims:
    """``subject`` is a user id (signatures, cookies) or a VM id (one-time agent tokens)."""

    subject: str
    kind: str
    expires_at: float
    nonce: str = ""

    @property
    def user_id(self) -> str:
        return self.subject


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: Path) -> bytes:
    """The instance's signing key (32 random bytes, created once, mode 0600)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key


class SessionSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, user_id: str, kind: str, ttl_s: float) -> str:
        claims = {"u": user_id, "k": kind, "e": round(time.time() + ttl_s, 3)}
        payload = secrets.token_bytes(NONCE_BYTES) + json.dumps(claims, separators=(",", ":")).encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify(self, token: str, kind: str) -> SessionClaims:
        try:
            body, _, sig = token.strip().partition(".")
            payload = _unb64(body)
            mac = _unb64(sig)
        except (ValueError, UnicodeError) as exc:
            raise InvalidSessionError("malformed session token") from exc
        if not hmac.compare_digest(mac, hmac.new(self._key, payload, hashlib.sha256).digest()):
            raise InvalidSessionError("invalid session signature")
        try:
            claims = json.loads(payload[NONCE_BYTES:])
            result = SessionClaims(str(claims["u"]), str(claims["k"]), float(claims["e"]), payload[:NONCE_BYTES].hex())
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSessionError("malformed session token") from exc
        if result.kind != kind:
            raise InvalidSessionError("session token of the wrong kind")
        if result.expires_at <= time.time():
            raise InvalidSessionError("session expired")
        return result

    def csrf_token(self, session_token: str) -> str:
        """The CSRF token bound to a session token (the ``rds_session`` cookie): a page served with the cookie
        carries it, a state-changing request made with the cookie must send it back. A site that can make the
        browser send the cookie cannot read the page, so it cannot know the token."""
        return _b64(hmac.new(self._key, b"csrf:" + session_token.strip().encode(), hashlib.sha256).digest())

    def check_csrf(self, session_token: str, presented: str | None) -> None:
        """:raise CsrfError: ``presented`` is not the CSRF token of ``session_token``"""
        if not presented or not hmac.compare_digest(presented.strip(), self.csrf_token(session_token)):
            raise CsrfError(
                "missing or wrong CSRF token: requests made with the rds_session cookie must send the"
                " page's token (X-CSRF-Token header or csrf form field)"
            )
