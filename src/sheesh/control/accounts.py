"""Accounts: users, logins (password with lockout, then TOTP), password changes and 2FA enrolment.

Methods that hash or check a password are slow by design (argon2): the API runs them on the hashing pool
(``Services.hashing``), never on the event loop. API keys themselves are ``ApiKeyAuth``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from sheesh.auth.apikeys import ApiKeyAuth
from sheesh.auth.passwords import hash_password
from sheesh.auth.totp import OtpRequiredError, new_secret, provisioning_uri, require_otp, valid
from sheesh.config import Settings
from sheesh.errors import ConflictError, NotFoundError
from sheesh.models import Role, User
from sheesh.store.repo import Store


@dataclass
class AccountService:
    store: Store
    auth: ApiKeyAuth
    settings: Settings

    def user(self, user_id: str) -> User:
        user = self.store.get_user(user_id)
        if user is None:
            raise NotFoundError("user not found")
        return user

    def list_users(self) -> list[User]:
        return self.store.list_users()

    def create_user(self, username: str, password: str, role: Role) -> User:
        """(slow: hashes the password)"""
        return self.auth.create_user(username, password, role)

    def set_role(self, user_id: str, role: Role) -> User:
        """Make the user an admin or a user; the last admin stays one (409)."""
        user = self.user(user_id)
        if user.role == Role.ADMIN and role != Role.ADMIN and self._admins() == [user.id]:
            raise ConflictError(f"{user.username} is the last admin")
        user.role = role
        self.store.save_user(user)
        return user

    def delete_user(self, actor_id: str, user_id: str) -> None:
        """Remove a user and their API keys: not yourself, nor someone who still owns VMs or snapshots (409)."""
        user = self.user(user_id)
        if user_id == actor_id:
            raise ConflictError("you cannot delete yourself")
        owned = [v.id for v in self.store.list_vms() if v.owner_id == user_id]
        owned += [s.id for s in self.store.list_snapshots() if s.owner_id == user_id]
        if owned:
            raise ConflictError(f"{user.username} still owns {', '.join(owned[:5])}: delete those first")
        self.store.delete_user(user_id)

    def _admins(self) -> list[str]:
        return [u.id for u in self.store.list_users() if u.role == Role.ADMIN]

    def check_password(self, username: str, password: str) -> User:
        """The user if the password is right, counting failures towards the lockout. (slow)"""
        settings = self.settings
        return self.auth.check_password(username, password, settings.login_max_failures, settings.login_lockout_s)

    def login(self, username: str, password: str, otp: str | None) -> User:
        """Password (with lockout), then the one-time passcode when the user has 2FA on. (slow)"""
        user = self.check_password(username, password)
        require_otp(user, otp)
        return user

    def change_password(self, user_id: str, current: str, new: str, otp: str | None) -> None:
        """Needs the current password and, with 2FA on, a passcode (even when called with an API key). (slow)"""
        user = self.check_password(self.user(user_id).username, current)
        require_otp(user, otp)
        user = self.user(user_id)
        user.password_hash = hash_password(new)
        self.store.save_user(user)

    def totp_enrol(self, user_id: str) -> tuple[str, str]:
        """A new TOTP secret and its ``otpauth://`` URI; 2FA is on once ``totp_verify`` saw a passcode."""
        user = self.user(user_id)
        if user.totp_enabled:
            raise ConflictError("2FA is already on; turn it off first")
        user.totp_secret = new_secret()
        self.store.save_user(user)
        return user.totp_secret, provisioning_uri(user, user.totp_secret)

    def totp_verify(self, user_id: str, otp: str) -> None:
        user = self.user(user_id)
        if user.totp_secret is None:
            raise ConflictError("start enrolment first (POST /v1/auth/totp)")
        if not valid(user.totp_secret, otp):
            raise OtpRequiredError("invalid one-time passcode")
        user.totp_enabled = True
        self.store.save_user(user)

    def totp_disable(self, user_id: str, otp: str) -> None:
        user = self.user(user_id)
        require_otp(user, otp)
        user.totp_enabled, user.totp_secret = False, None
        self.store.save_user(user)
