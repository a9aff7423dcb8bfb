"""The SDK's exceptions: one per HTTP status the API answers with, each carrying the server's message.

::

    SheeshClientError                 everything the SDK raises
    ├── ConfigurationError            no API key (or URL) could be found
    ├── APIConnectionError            the server could not be reached
    │   └── APITimeoutError           ...in time
    ├── StreamError                   a streaming exec broke off
    └── APIError                      the server answered with an error (``status``, ``message``)
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404
        ├── ConflictError             409
        ├── PayloadTooLargeError      413
        ├── RateLimitError            429 (``retry_after_s``)
        ├── InternalServerError       500
        └── ServiceUnavailableError   503
"""

from __future__ import annotations


class SheeshClientError(Exception):
    """Base of every error of the SDK."""


class ConfigurationError(SheeshClientError):
    """The client was not given what it needs (an API key) and found it nowhere."""


class APIConnectionError(SheeshClientError):
    """The server could not be reached (refused, reset, DNS, TLS)."""


class APITimeoutError(APIConnectionError):
    """The server did not answer in time."""


class StreamError(SheeshClientError):
    """A streaming exec ended without its exit message (the connection broke off)."""


class APIError(SheeshClientError):
    """The server answered ``status`` with ``message`` (its JSON ``message`` field)."""

    status: int = 0

    def __init__(self, message: str, *, status: int | None = None, body: object = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.body = body

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class BadRequestError(APIError):
    status = 400


class AuthenticationError(APIError):
    status = 401


class PermissionDeniedError(APIError):
    status = 403


class NotFoundError(APIError):
    status = 404


class ConflictError(APIError):
    status = 409


class PayloadTooLargeError(APIError):
    status = 413


class RateLimitError(APIError):
    status = 429

    def __init__(self, message: str, *, status: int | None = None, body: object = None, retry_after_s: float = 1):
        super().__init__(message, status=status, body=body)
        self.retry_after_s = retry_after_s


class InternalServerError(APIError):
    status = 500


class ServiceUnavailableError(APIError):
    status = 503


_BY_STATUS: dict[int, type[APIError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        RateLimitError,
        InternalServerError,
        ServiceUnavailableError,
    )
}


def error_for(status: int, message: str, body: object = None, retry_after_s: float | None = None) -> APIError:
    """The exception of ``status`` (``APIError`` itself for statuses without a class of their own)."""
    if status == 429:
        return RateLimitError(message, status=status, body=body, retry_after_s=retry_after_s or 1)
    cls = _BY_STATUS.get(status)
    if cls is None:
        return (InternalServerError if status >= 500 else APIError)(message, status=status, body=body)
    return cls(message, status=status, body=body)
