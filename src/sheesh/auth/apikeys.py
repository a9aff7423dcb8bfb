"""Users, API keys and the principal a request acts as.

API keys are random secrets shown once and stored as SHA-256 hashes (they are high-entropy, so a fast hash
is right; passwords use argon2). The key configured as ``SHEESH_API_KEY`` acts as the admin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sheesh.auth.passwords import hash_password, verify_password
from sheesh.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, RateLimitedError
from sheesh.models import ApiKey, Role, User
from sheesh.store.repo import Store

ADMIN = "admin"
_DUMMY_HASH = hash_password("sheesh-timing-equaliser")


class AuthenticationError(ForbiddenError):
    """Wrong credentials (HTTP 403, as karma.run answers a bad password)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "sk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as; ``token_hash`` is the SHA-256 of the API key used, if any. ``login`` is true for
    login tokens (signatures, cookies): their 2FA passcode was checked at login, so 2FA-protected operations
    need no new one (Kyun: API keys do not open them without a passcode)."""

    user_id: str
    username: str
    role: Role
    token_hash: str | None = None
    login: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def can_see(self, owner_id: str | None) -> bool:
        """Admins see everything; users see what they own."""
        return self.is_admin or owner_id == self.user_id


class ApiKeyAuth:
    """Key lookup, key management, users. ``configured_key`` (optional) authenticates as the admin."""

    def __init__(self, store: Store, configured_key: str | None = None, instance_secret: str | None = None) -> None:
        self.store = store
        self._configured_hash = hash_key(configured_key) if configured_key else None
        self._instance_secret = instance_secret

    # --- users -----------------------------------------------------------------------------------------
    def admin(self) -> User:
        user = self.store.get_user_by_name(ADMIN)
        if user is None:
            raise NotFoundError("the admin user does not exist yet")
        return user

    def create_user(self, username: str, password: str, role: Role = Role.USER) -> User:
        if self.store.get_user_by_name(username) is not None:
            raise ConflictError(f"user {username} already exists")
        user = User(
            id=f"usr-{secrets.token_hex(6)}",
            username=username,
            password_hash=hash_password(password),
            role=role,
            created_at=datetime.now(UTC),
        )
        self.store.add_user(user)
        return user

    def check_password(self, username: str, password: str, max_failures: int, lockout_s: float) -> User:
        """The user if the password matches. Failures are counted per user; from ``max_failures`` on, the
        account locks for ``lockout_s`` doubling with each further failure (capped at one hour), and while
        locked even the right password is refused (RateLimitedError), so guessing gains nothing."""
        now = datetime.now(UTC)
        user = self.store.get_user_by_name(username)
        if user is None:
            verify_password(_DUMMY_HASH, password)  # same cost as a real check: no username probing by timing
            raise AuthenticationError("invalid username or password")
        if user.locked_until is not None and user.locked_until > now:
            wait = int((user.locked_until - now).total_seconds()) + 1
            raise RateLimitedError(f"too many failed logins; retry in {wait}s", wait)
        if not verify_password(user.password_hash, password):
            user.failed_logins += 1
            if user.failed_logins >= max_failures:
                extra = min(3600.0, lockout_s * 2 ** (user.failed_logins - max_failures))
                user.locked_until = now + timedelta(seconds=extra)
            self.store.save_user(user)
            raise AuthenticationError("invalid username or password")
        if user.failed_logins or user.locked_until:
            user.failed_logins, user.locked_until = 0, None
            self.store.save_user(user)
        return user

    def principal_for_user(self, user_id: str) -> Principal | None:
        """The principal of a user's login token."""
        user = self.store.get_user(user_id)
        return Principal(user.id, user.username, user.role, login=True) if user else None

    # --- keys ------------------------------------------------------------------------------------------
    def principal_for_key(self, presented: str | None) -> Principal | None:
        """The principal a presented key stands for; None if unknown, expired or revoked."""
        if not presented:
            return None
        digest = hash_key(presented)
        if self._configured_hash is not None and hmac.compare_digest(digest, self._configured_hash):
            admin = self.admin()
            return Principal(admin.id, admin.username, admin.role, digest)
        key = self.store.find_api_key(digest)
        if key is None or (key.expires_at is not None and key.expires_at <= datetime.now(UTC)):
            return None
        user = self.store.get_user(key.user_id)
        if user is None:
            return None
        return Principal(user.id, user.username, user.role, digest)

    def create_key(self, user_id: str, label: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
        """Make a key, store its hash, return the record and the plaintext (shown only this once)."""
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise InvalidInputError("expiresAt must be in the future")
        plaintext = generate_key()
        key = ApiKey(
            id=f"key-{secrets.token_hex(6)}",
            user_id=user_id,
            label=label,
            key_hash=hash_key(plaintext),
            created_at=datetime.now(UTC),
            expires_at=expires_at,
        )
        self.store.add_api_key(key)
        return key, plaintext

    def list_keys(self, user_id: str) -> list[ApiKey]:
        return self.store.list_api_keys(user_id)

    def delete_key(self, principal: Principal, key_id: str) -> None:
        key = self.store.get_api_key(key_id)
        if key is None or not principal.can_see(key.user_id):
            raise NotFoundError(f"API key {key_id} not found")
        self.store.delete_api_key(key_id)

    def revoke(self, principal: Principal, sha256_hex: str) -> None:
        """Revoke the key with this SHA-256 (hex); a key may revoke itself; admins may revoke any."""
        key = self.store.find_api_key(sha256_hex.lower())
        if key is None or not principal.can_see(key.user_id):
            raise NotFoundError("no such API key")
        self.store.delete_api_key(key.id)

    def purge(self, user_id: str) -> int:
        """Delete every API key of the user; returns how many."""
        return self.store.delete_user_api_keys(user_id)

    # --- first start -----------------------------------------------------------------------------------
    def bootstrap(self) -> list[str]:
        """Create the admin (password: the base64 instance secret) and, without a configured key, a first
        admin key. Returns lines to show once (secrets are not stored in plaintext)."""
        lines: list[str] = []
        if self.store.get_user_by_name(ADMIN) is None:
            secret = self._instance_secret
            if not secret:
                secret = base64.b64encode(secrets.token_bytes(24)).decode()
                lines.append(f"Admin user 'admin', password (instance secret, base64): {secret}")
            self.create_user(ADMIN, secret, Role.ADMIN)
        if self._configured_hash is None and self.store.count_api_keys() == 0:
            _, plaintext = self.create_key(self.admin().id, "initial")
            lines.append(f"Generated API key for admin (shown once): {plaintext}")
        return lines
