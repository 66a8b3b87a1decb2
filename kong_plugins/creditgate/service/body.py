"""Request bodies: a size limit, the content type, strict JSON, and the JSON Schemas the CLI uses."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from fastapi import Request

from creditgate.service.problems import ApiProblem

DEFAULT_BODY_LIMIT = 1 << 20  # bytes: a plan file or a Stripe event is a few kilobytes


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes, whether or not Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiProblem(413, "payload_too_large", f"the body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiProblem(413, "payload_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json_type(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiProblem(
            415, "unsupported_media_type", f"send the body as application/json, not {media or 'nothing'}"
        )


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no duplicate keys (a second "amount" would be ambiguous)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"the key {key!r} appears twice")
            out[key] = value
        return out

    try:
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError:
        raise ApiProblem(400, "malformed_body", "the body is not UTF-8") from None
    except ValueError as error:
        raise ApiProblem(400, "malformed_body", f"the body is not valid JSON: {error}") from None


async def json_body(request: Request, limit: int) -> Any:
    require_json_type(request)
    return parse_json(await read_body(request, limit))


def validate(document: Any, schema: dict[str, Any], where: str = "") -> None:
    """Check ``document`` against a JSON Schema; the first error (by position) becomes a 422."""
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        path = ".".join(str(p) for p in error.absolute_path)
        field = ".".join(p for p in (where, path) if p)
        raise ApiProblem(
            422,
            "invalid_input",
            f"{field}: {error.message}" if field else error.message,
            field=field,
        )
