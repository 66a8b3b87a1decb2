"""Kong's plugin schema, seen from the outside: as JSON Schema, and checked the way Kong checks it.

The plugin's fields (``creditgate.core.schema.FIELDS``, the plugin file's ``Schema``) are the one
source of truth. ``to_json_schema`` derives ``schemas/plugin-config.schema.json`` from them
(``python -m creditgate.core.kong_schema`` rewrites the file; a test fails when the two differ), and
``to_markdown`` the README's config table (``--markdown``).
``validate`` applies the rules Kong applies to a plugin's ``config`` in ``kong.yml`` before it ever
reaches the plugin (``kong/db/schema/init.lua``): unknown fields are rejected, types are strict,
missing fields take their defaults (a required record is expanded to get its nested defaults),
required fields must be present, and ``between``, ``one_of``, ``len_min`` hold.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

Field = Mapping[str, Any]
KongFields = Sequence[Mapping[str, Field]]

_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "set": "array",
    "map": "object",
    "record": "object",
}


def _json_field(field: Field, *, element: bool = False) -> dict[str, Any]:
    kind = field["type"]
    out: dict[str, Any] = {"type": _JSON_TYPES[kind]}
    if kind == "record":
        out = to_json_schema(field["fields"], nested=True)
    if kind in ("array", "set"):
        out["items"] = _json_field(field["elements"], element=True)
        if kind == "set":
            out["uniqueItems"] = True
    if "between" in field:
        out["minimum"], out["maximum"] = field["between"]
    if "one_of" in field:
        out["enum"] = list(field["one_of"])
    if "len_min" in field:
        out["minLength"] = field["len_min"]
    if "default" in field:
        out["default"] = field["default"]
    if "description" in field:
        out["description"] = field["description"]
    if not element and not field.get("required") and "default" not in field:
        out["type"] = [out["type"], "null"]
    return out


def to_json_schema(fields: KongFields, *, nested: bool = False) -> dict[str, Any]:
    """The JSON Schema of a plugin's ``config`` record as a user writes it in ``kong.yml``."""
    properties: dict[str, Any] = {}
    for entry in fields:
        ((name, field),) = entry.items()
        properties[name] = _json_field(field)
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if not nested:
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:credit-gate:schema:plugin-config",
            "title": "credit-gate plugin configuration",
            "description": "The `config` of a credit-gate plugin entry in kong.yml. Generated from the "
            "plugin's Kong schema (credit_gate.Schema) by `python -m creditgate.core.kong_schema`.",
            **schema,
        }
    return schema


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("array", "set"):
        return isinstance(value, list)
    return isinstance(value, dict)


def _check(field: Field, value: Any, path: str, errors: list[str]) -> Any:
    kind = field["type"]
    if not _type_ok(kind, value):
        errors.append(f"{path}: expected {'a' if kind != 'integer' else 'an'} {kind}")
        return value
    if kind == "record":
        return _check_record(field["fields"], value, path + ".", errors)
    if kind in ("array", "set"):
        return [_check(field["elements"], item, f"{path}[{i}]", errors) for i, item in enumerate(value)]
    if "between" in field:
        low, high = field["between"]
        if not low <= value <= high:
            errors.append(f"{path}: value should be between {low} and {high}")
    if "one_of" in field and value not in field["one_of"]:
        errors.append(f"{path}: expected one of: {', '.join(map(str, field['one_of']))}")
    if "len_min" in field and len(value) < field["len_min"]:
        errors.append(f"{path}: length must be at least {field['len_min']}")
    return value


def _missing(field: Field) -> Any:
    if "default" in field:
        return json.loads(json.dumps(field["default"]))
    if field.get("required") and field["type"] == "record":
        return _check_record(field["fields"], {}, "", [])
    return None


def _check_record(
    fields: KongFields, value: Mapping[str, Any], prefix: str, errors: list[str]
) -> dict[str, Any]:
    known = {name: field for entry in fields for name, field in entry.items()}
    out: dict[str, Any] = {}
    for name in value:
        if name not in known:
            errors.append(f"{prefix}{name}: unknown field")
    for name, field in known.items():
        raw = value.get(name)
        if raw is None:
            raw = _missing(field)
            if raw is None:
                if field.get("required"):
                    errors.append(f"{prefix}{name}: required field missing")
                out[name] = None
                continue
        out[name] = _check(field, raw, prefix + name, errors)
    return out


def validate(fields: KongFields, config: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Kong's view of a plugin ``config``: the config with defaults filled in, and the errors."""
    errors: list[str] = []
    filled = _check_record(fields, config or {}, "config.", errors)
    return filled, errors


def _markdown_type(field: Field) -> str:
    kind = str(field["type"])
    if kind in ("array", "set"):
        inner = field["elements"]
        return f"array of {'records' if inner['type'] == 'record' else inner['type'] + 's'}"
    return kind


def _markdown_rows(fields: KongFields, prefix: str = "") -> list[str]:
    rows = []
    for entry in fields:
        ((name, field),) = entry.items()
        default = json.dumps(field["default"]) if "default" in field else ""
        if "one_of" in field:
            default += " (one of: " + ", ".join(f"`{v}`" for v in field["one_of"]) + ")"
        if "between" in field:
            low, high = field["between"]
            default += f" ({low} to {high})"
        description = str(field.get("description", "")).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_markdown_type(field)} | {default.strip()} | {description} |")
        if field["type"] == "record":
            rows += _markdown_rows(field["fields"], f"{prefix}{name}.")
        if field["type"] in ("array", "set") and field["elements"]["type"] == "record":
            rows += _markdown_rows(field["elements"]["fields"], f"{prefix}{name}[].")
    return rows


def to_markdown(fields: KongFields) -> str:
    """The config table of the README, from the same schema Kong validates against."""
    header = ["| field | type | default | what it does |", "| --- | --- | --- | --- |"]
    return "\n".join(header + _markdown_rows(fields)) + "\n"


def main() -> None:
    from creditgate.core.schema import FIELDS

    if "--markdown" in sys.argv[1:]:
        sys.stdout.write(to_markdown(FIELDS))
        return
    json.dump(to_json_schema(FIELDS), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
