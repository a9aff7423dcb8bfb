"""Root exception hierarchy shared by every tier.

Each package defines its own root (``VmmError``, ``StoreError``, ...) deriving from ``SheeshError``;
each kind below carries the HTTP status it answers with (``status_code``).
"""


class SheeshError(Exception):
    """Base of every error sheesh raises on purpose. ``message`` is safe to show to users."""

    status_code = 500
    """The HTTP status this kind of error answers with (the API, and the node contract over HTTP)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(SheeshError):
    """The request is malformed or out of range (HTTP 400)."""

    status_code = 400


class NotFoundError(SheeshError):
    """The addressed resource does not exist or is not visible to the caller (HTTP 404)."""

    status_code = 404


class AuthenticationError(SheeshError):
    """No credentials, or unknown ones (HTTP 401)."""

    status_code = 401


class ForbiddenError(SheeshError):
    """Credentials were presented but are wrong, expired or insufficient (HTTP 403)."""

    status_code = 403


class ConflictError(SheeshError):
    """The operation conflicts with the resource's current state (HTTP 409)."""

    status_code = 409


class PayloadTooLargeError(SheeshError):
    """An upload exceeds its limit (HTTP 413)."""

    status_code = 413


class UnavailableError(SheeshError):
    """A dependency (node, guest agent, hypervisor) cannot serve the request now (HTTP 503)."""

    status_code = 503


class GuestTimeoutError(UnavailableError):
    """The guest agent did not answer in time."""


class RateLimitedError(SheeshError):
    """Too many requests (HTTP 429); ``retry_after_s`` goes into the Retry-After header."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
