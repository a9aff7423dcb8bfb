"""Conventions of the rerobots surface (seed 001) shared by its routers: Accept-header versioning, JSON bodies
sent without a Content-Type (as rerobots clients do), page-based listing, and the request mark that gives
errors their ``error_message``."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel

from sheesh.api.bodies import validated
from sheesh.api.errors import REROBOTS_SURFACE
from sheesh.errors import InvalidInputError

API_VERSION = 1
MEDIA_TYPE = f"application/vnd.rerobots.v{API_VERSION}+json"
_VERSIONED = re.compile(r"application/vnd\.rerobots\.v([^+;,\s]*)\+json", re.IGNORECASE)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def rerobots_surface(request: Request) -> None:
    """Router dependency (listed first): marks the request for rerobots-style errors and checks the version
    its Accept header asks for (none: v1)."""
    request.scope.setdefault("state", {})["surface"] = REROBOTS_SURFACE
    asked = _VERSIONED.findall(request.headers.get("accept", ""))
    if asked and str(API_VERSION) not in asked:
        raise HTTPException(
            status_code=406,
            detail=f"API version {', '.join('v' + v for v in asked)} is not available; "
            f"this server speaks v{API_VERSION} (Accept: {MEDIA_TYPE})",
        )


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON object as ``model``, whatever its Content-Type says (rerobots clients send none);
    an empty body is ``{}``."""
    raw = await request.body()
    try:
        data: Any = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError("request body is not valid JSON") from None
    return validated(model, data)


def paginate(items: list[T], max_per_page: int, page: int) -> tuple[list[T], int]:
    """``max_per_page`` 0: everything on one page. A page past the end is the last page."""
    if max_per_page < 0 or page < 1:
        raise InvalidInputError("max_per_page must be >= 0 and page >= 1")
    if max_per_page == 0:
        return items, 1
    count = max(1, math.ceil(len(items) / max_per_page))
    page = min(page, count)
    return items[(page - 1) * max_per_page : page * max_per_page], count


def int_param(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"{name} must be an integer") from None
