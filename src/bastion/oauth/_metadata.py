"""Wording shared by the metadata parsers (RFC 8414, RFC 9728): what is wrong with a document,
from pydantic's first error, without quoting the document (it could carry anything)."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError) -> str:
    """E.g. "is not valid JSON", "has no `issuer`", "has an invalid `jwks_uri`: ..."."""
    first = exc.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return "is not valid JSON"
    if kind == "model_type":
        return "is not a JSON object"
    where = ".".join(str(item) for item in first["loc"])
    if kind == "missing":
        return f"has no `{where}`"
    return f"has an invalid `{where}`: {first['msg']}"
