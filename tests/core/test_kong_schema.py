"""The plugin's Kong schema: one source of truth for Kong and for schemas/plugin-config.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

from credit_gate import Schema
from creditgate.core.config import parse_config
from creditgate.core.kong_schema import to_json_schema, to_markdown, validate

ROOT = Path(__file__).parents[2]


def test_the_committed_json_schema_is_generated_from_the_kong_schema() -> None:
    committed = json.loads((ROOT / "schemas" / "plugin-config.schema.json").read_text())
    assert committed == to_json_schema(Schema), (
        "run: python -m creditgate.core.kong_schema > schemas/plugin-config.schema.json"
    )


def test_every_field_has_a_type_and_a_description() -> None:
    def walk(fields: list[dict[str, dict[str, object]]]) -> None:
        for entry in fields:
            ((name, field),) = entry.items()
            assert field.get("type") and field.get("description"), name
            if field["type"] == "record":
                walk(field["fields"])  # type: ignore[arg-type]

    walk(Schema)


def test_an_empty_config_is_filled_with_defaults_the_plugin_accepts() -> None:
    filled, errors = validate(Schema, {})
    assert errors == []
    assert filled["redis"]["port"] == 6379
    assert parse_config(filled).cost == 1


def test_kong_rejects_unknown_fields_and_wrong_types() -> None:
    _, errors = validate(Schema, {"cost": "5", "colour": "red", "redis": {"port": 0}})
    assert "config.cost: expected an integer" in errors
    assert "config.colour: unknown field" in errors
    assert "config.redis.port: value should be between 1 and 65535" in errors


def test_the_readme_config_table_is_generated_from_the_kong_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- config-table:start -->\n", 1)[1].split("<!-- config-table:end -->", 1)[0]
    assert table.strip() == to_markdown(Schema).strip(), (
        "run: python -m creditgate.core.kong_schema --markdown"
    )
