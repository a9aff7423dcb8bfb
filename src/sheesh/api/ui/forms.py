"""HTML form input, checked by the REST API's body schemas: form fields are strings, so the numbers a schema
takes strictly are turned into ints first (a field that is not a number is left for the schema to refuse)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from sheesh.api.errors import validation_message
from sheesh.errors import InvalidInputError

B = TypeVar("B", bound=BaseModel)
MAX_FILES = 100
MAX_FIELDS = 100


async def form_of(request: Request) -> FormData:
    """The request's form (url-encoded or multipart; parsed once, ``ui_session`` may have read it)."""
    return await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)


def checkbox(form: FormData, name: str) -> bool:
    return form.get(name) in ("true", "on", "1")


def validated_form(model: type[B], fields: dict[str, Any], ints: Iterable[str] = ()) -> B:
    """``model`` of ``fields`` (by alias), or InvalidInputError with the REST API's message."""
    data = dict(fields)
    for name in ints:
        value = data.get(name)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            data[name] = int(value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(validation_message(exc.errors())) from None
