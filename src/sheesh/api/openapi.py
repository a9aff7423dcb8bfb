"""OpenAPI: FastAPI emits 3.1; the API promises (and the bundled Swagger UI renders) 3.0."""

from __future__ import annotations

from typing import Any


def to_openapi_30(node: Any) -> Any:
    """Rewrite a 3.1 document into 3.0.3: ``anyOf`` with ``null`` -> ``nullable``, ``const`` -> ``enum``,
    ``examples`` -> ``example``, numeric ``exclusiveMinimum/Maximum`` -> boolean form."""
    if isinstance(node, list):
        return [to_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_openapi_30(v) for k, v in node.items()}
    if out.get("openapi", "").startswith("3.1"):
        out["openapi"] = "3.0.3"
    null_forms = ({"type": "null"}, {"nullable": True})  # children are converted first: both spellings
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and any(o in null_forms for o in options):
            rest = [o for o in options if o not in null_forms]
            del out[key]
            out["nullable"] = True
            if len(rest) == 1:
                out = {**rest[0], **out} if "$ref" not in rest[0] else {**out, "allOf": rest}
            else:
                out[key] = rest
    if out.get("type") == "null":
        out.pop("type")
        out["nullable"] = True
    if "const" in out and isinstance(out.get("const"), str | int | float | bool):
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[flag] = out.pop(bound)
            out[bound] = True
    return out


_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_WHY = {
    400: "Bad input (validation failed)",
    401: "Missing or invalid credentials",
    409: "Conflict with the current state",
    403: "Expired or tampered signature/cookie, or not allowed",
    404: "Not found",
    413: "Request body too large",
    414: "Request line (path and query) longer than 16 KiB",
    429: "Rate limited (see Retry-After)",
    503: "The VM's node or guest agent is unavailable",
}


def complete_responses(doc: dict[str, Any]) -> dict[str, Any]:
    """Make every operation list the error statuses it can really answer, and none it cannot: FastAPI's
    422 is never sent (validation errors are 400); every operation can be rate limited (429); one with a body
    can be too large (413) or invalid (400), as can one with parameters (and its URL too long, 414); all take
    credentials (a header, the cookie, or a login body) and can answer 401 and 403; one with a path parameter
    can answer 404, one on a VM also 409 (its state) and 503 (its node or guest)."""
    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses: dict[str, Any] = op["responses"]
            responses.pop("422", None)
            codes = {429}
            params = op.get("parameters", [])
            if "requestBody" in op:
                codes |= {400, 413}
            if params:
                codes |= {400, 414}
            codes |= {401, 403}  # every operation in the document takes credentials (header, cookie or body)
            if any(p.get("in") == "path" for p in params):
                codes.add(404)
            if "{vm_id}" in path:
                codes |= {409, 503}  # the VM's state forbids it; its node or guest agent cannot be reached
            for code in sorted(codes):
                responses.setdefault(
                    str(code),
                    {"description": _WHY[code], "content": {"application/json": {"schema": _ERROR_REF}}},
                )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.setdefault(
        "ErrorOut",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"], "title": "ErrorOut"},
    )
    return doc
