"""HTTP for the SDK: a ``Call`` says what to send and how to read the answer (no I/O); ``SyncTransport`` and
``AsyncTransport`` send it with httpx, map errors to ``sheesh.client.errors`` once, and retry a 429 after its
``Retry-After`` (at most ``max_retries`` times, each wait at most ``max_retry_wait_s``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

import httpx

from sheesh import __version__
from sheesh.client.config import Credentials
from sheesh.client.errors import APIConnectionError, APIError, APITimeoutError, RateLimitError, error_for

T = TypeVar("T")
UPLOAD_CHUNK = 1024 * 1024
Progress = Callable[[int, int | None], None]
"""Called with (bytes done, bytes in all or None when not known)."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to turn its answer (the decoded JSON; None for an empty body) into ``T``."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    parse_with_headers: Callable[[Any, httpx.Headers], T] | None = None
    """Used instead of ``parse`` when set: for answers whose headers say more (``Server-Timing``)."""

    def read(self, response: httpx.Response) -> T:
        """``T`` of a successful answer."""
        body = decoded(response)
        if self.parse_with_headers is not None:
            return self.parse_with_headers(body, response.headers)
        return self.parse(body)


def _message(response: httpx.Response) -> tuple[str, object]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase, None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"], body
    return str(body)[:500], body


def raise_for(response: httpx.Response) -> None:
    """The ``APIError`` of an error answer (nothing for a success)."""
    if response.is_success:
        return
    message, body = _message(response)
    try:
        retry = float(response.headers.get("retry-after", "1"))
    except ValueError:
        retry = 1.0
    raise error_for(response.status_code, message, body, retry)


def _body_headers(call: Call[Any], size: int | None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream", **call.headers}
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


def decoded(response: httpx.Response) -> Any:
    return response.json() if response.content else None


class _Base:
    def __init__(self, creds: Credentials, *, timeout_s: float, max_retries: int, max_retry_wait_s: float) -> None:
        self.base_url = creds.base_url
        self.api_key = creds.api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.headers = {"X-API-Key": creds.api_key, "User-Agent": f"sheesh-python/{__version__}"}

    def retry_wait(self, exc: APIError, attempt: int) -> float | None:
        """How long to wait before trying again after ``exc`` (None: give up)."""
        if not isinstance(exc, RateLimitError) or attempt >= self.max_retries:
            return None
        if exc.retry_after_s > self.max_retry_wait_s:
            return None
        return max(0.0, exc.retry_after_s)

    @staticmethod
    def transport_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"{url} did not answer in time ({type(exc).__name__})")
        return APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}")


class SyncTransport(_Base):
    def __init__(
        self,
        creds: Credentials,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(creds, timeout_s=timeout_s, max_retries=max_retries, max_retry_wait_s=max_retry_wait_s)
        self.http = http or httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout_s)

    def send(self, build: Callable[[], httpx.Response]) -> httpx.Response:
        """``build()``'s response once it is not a 429 to wait out; error answers raise."""
        attempt = 0
        while True:
            try:
                response = build()
            except httpx.TransportError as exc:
                raise self.transport_error(exc, self.base_url) from exc
            try:
                raise_for(response)
                return response
            except APIError as exc:
                wait = self.retry_wait(exc, attempt)
                if wait is None:
                    raise
                attempt += 1
                time.sleep(wait)

    def run(self, call: Call[T]) -> T:
        response = self.send(
            lambda: self.http.request(call.method, call.path, params=call.params, json=call.json, headers=call.headers)
        )
        return call.read(response)

    def send_file(self, call: Call[T], file: IO[bytes], size: int | None, progress: Progress | None) -> T:
        """Send ``call`` with ``file`` as its body, in chunks (``progress`` after each)."""

        def chunks() -> Iterator[bytes]:
            done = 0
            while chunk := file.read(UPLOAD_CHUNK):
                done += len(chunk)
                yield chunk
                if progress is not None:
                    progress(done, size)

        headers = _body_headers(call, size)
        timeout = httpx.Timeout(self.timeout_s, read=None, write=None)
        start = file.tell()

        def build() -> httpx.Response:
            file.seek(start)
            return self.http.request(
                call.method, call.path, params=call.params, content=chunks(), headers=headers, timeout=timeout
            )

        return call.read(self.send(build))

    def get_to(self, path: str, params: dict[str, Any], out: IO[bytes], progress: Progress | None) -> int:
        """Stream the answer's body into ``out``; returns its size."""
        timeout = httpx.Timeout(self.timeout_s, read=None)
        try:
            with self.http.stream("GET", path, params=params, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    raise_for(response)
                total = int(response.headers["content-length"]) if "content-length" in response.headers else None
                done = 0
                for chunk in response.iter_bytes(UPLOAD_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                return done
        except httpx.TransportError as exc:
            raise self.transport_error(exc, self.base_url) from exc

    def close(self) -> None:
        self.http.close()


class AsyncTransport(_Base):
    def __init__(
        self,
        creds: Credentials,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(creds, timeout_s=timeout_s, max_retries=max_retries, max_retry_wait_s=max_retry_wait_s)
        self.http = http or httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout_s)

    async def send(self, build: Callable[[], Any]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response: httpx.Response = await build()
            except httpx.TransportError as exc:
                raise self.transport_error(exc, self.base_url) from exc
            try:
                raise_for(response)
                return response
            except APIError as exc:
                wait = self.retry_wait(exc, attempt)
                if wait is None:
                    raise
                attempt += 1
                await asyncio.sleep(wait)

    async def run(self, call: Call[T]) -> T:
        response = await self.send(
            lambda: self.http.request(call.method, call.path, params=call.params, json=call.json, headers=call.headers)
        )
        return call.read(response)

    async def send_file(self, call: Call[T], file: IO[bytes], size: int | None, progress: Progress | None) -> T:
        async def chunks() -> AsyncIterator[bytes]:
            done = 0
            while chunk := await asyncio.to_thread(file.read, UPLOAD_CHUNK):
                done += len(chunk)
                yield chunk
                if progress is not None:
                    progress(done, size)

        headers = _body_headers(call, size)
        timeout = httpx.Timeout(self.timeout_s, read=None, write=None)
        start = file.tell()

        def build() -> Any:
            file.seek(start)
            return self.http.request(
                call.method, call.path, params=call.params, content=chunks(), headers=headers, timeout=timeout
            )

        return call.read(await self.send(build))

    async def get_to(self, path: str, params: dict[str, Any], out: IO[bytes], progress: Progress | None) -> int:
        timeout = httpx.Timeout(self.timeout_s, read=None)
        try:
            async with self.http.stream("GET", path, params=params, timeout=timeout) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for(response)
                total = int(response.headers["content-length"]) if "content-length" in response.headers else None
                done = 0
                async for chunk in response.aiter_bytes(UPLOAD_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                return done
        except httpx.TransportError as exc:
            raise self.transport_error(exc, self.base_url) from exc

    async def close(self) -> None:
        await self.http.aclose()
