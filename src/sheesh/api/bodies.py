"""Request bodies read by hand (the rerobots and karma.run surfaces decide themselves how a body is encoded):
the decoded data checked against a pydantic model, with the same 400 messages as FastAPI's own bodies."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sheesh.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidInputError("request body must be an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        message = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        raise InvalidInputError(f"{where}: {str(message).removeprefix('Value error, ')}") from None
