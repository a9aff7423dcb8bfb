"""Conventions of the karma.run surface (seed 002): ``X-Karma-Codec`` decides how request bodies are read and
responses (errors too) are written, whatever the Content-Type says; ``Expect`` must be empty (a
``100-continue`` is refused with 417 before the body is read, so a client never waits for it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack
from fastapi import HTTPException, Request
from fastapi.responses import Response

from sheesh.errors import InvalidInputError

KARMA_SURFACE = "karma"
MAX_DEPTH = 64


@dataclass(frozen=True)
class Codec:
    name: str
    media_type: str

    def decode(self, raw: bytes) -> Any:
        try:
            if self.name == "msgpack":
                return msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=len(raw))
            return json.loads(raw)
        except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            raise InvalidInputError(f"request body is not valid {self.name}") from None

    def encode(self, value: Any) -> bytes:
        if self.name == "msgpack":
            return bytes(msgpack.packb(value, use_bin_type=True))
        return json.dumps(value, separators=(",", ":")).encode()


CODECS = {c.name: c for c in (Codec("json", "application/json"), Codec("msgpack", "application/msgpack"))}


def codec_of(request: Request) -> Codec:
    """The request's codec (default json); never raises (errors are written in json then)."""
    return CODECS.get(request.headers.get("x-karma-codec", "json").strip().lower(), CODECS["json"])


def karma_surface(request: Request) -> Codec:
    """Route dependency: marks the request (errors are written with its codec), checks ``X-Karma-Codec`` and
    ``Expect``; the codec."""
    request.scope.setdefault("state", {})["surface"] = KARMA_SURFACE
    name = request.headers.get("x-karma-codec", "json").strip().lower()
    if name not in CODECS:
        raise InvalidInputError(f"unsupported X-Karma-Codec {name!r}: available are {', '.join(CODECS)}")
    expect = request.headers.get("expect", "").strip()
    if expect:
        raise HTTPException(
            status_code=417, detail=f"Expect: {expect} is not supported; send Expect with an empty value"
        )
    return CODECS[name]


async def read_body(request: Request, codec: Codec) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidInputError("request body is required")
    return codec.decode(raw)


def respond(codec: Codec, value: Any, status_code: int = 200) -> Response:
    return Response(codec.encode(value), status_code=status_code, media_type=codec.media_type)
