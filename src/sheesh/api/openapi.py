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
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and any(o == {"type": "null"} for o in options):
            rest = [o for o in options if o != {"type": "null"}]
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
