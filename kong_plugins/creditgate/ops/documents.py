"""Plan files: YAML or JSON, checked against ``schemas/plan.schema.json`` before anything is written.

A file holds one plan, a list of plans, or ``{"plans": [...]}``. Every error names the file, the plan
(by name, or by position when the name itself is wrong) and the field, so an operator can go straight
to the line to fix. Either every plan in a file is valid and applied, or none is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from creditgate.core.model import Plan
from creditgate.errors import InvalidDocument


@cache
def schema(name: str) -> dict[str, Any]:
    """One of the JSON Schemas shipped in the package (the same files as the repository's ``schemas/``)."""
    text = (resources.files("creditgate") / "schemas" / f"{name}.schema.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def _validator(name: str) -> jsonschema.protocols.Validator:
    document = schema(name)
    cls = jsonschema.validators.validator_for(document)
    return cls(document, format_checker=cls.FORMAT_CHECKER)


_KINDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping of fields",
    "null": "empty",
}


def _shown(value: Any) -> str:
    """A value as the operator wrote it in YAML or JSON (true, not Python's True)."""
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)


def explain(error: jsonschema.ValidationError) -> str:
    """A schema error in an operator's words: what the field must be, and what was found.

    jsonschema's own text speaks Python (``True is not of type 'integer'``, ``Additional properties are
    not allowed``); the operator wrote YAML or JSON, and wants to know what to write instead.
    """
    # Typed as Any: jsonschema types these as "value or Unset", and each branch checks what it needs.
    kind: Any = error.validator
    expected: Any = error.validator_value
    found: Any = error.instance
    where: Any = error.schema
    hint = where.get("description") if isinstance(where, dict) else None
    if kind == "type":
        kinds = [expected] if isinstance(expected, str) else list(expected)
        return f"must be {' or '.join(_KINDS.get(k, k) for k in kinds)}, got {_shown(found)}"
    if kind == "additionalProperties" and isinstance(found, dict):
        known = sorted((where.get("properties") if isinstance(where, dict) else None) or {})
        unknown = sorted(k for k in found if k not in known)
        return (
            f"has unknown field(s) {', '.join(repr(k) for k in unknown)}; the fields are: {', '.join(known)}"
        )
    if kind == "required" and isinstance(found, dict):
        missing = [k for k in expected if k not in found]
        return f"is missing the required field(s) {', '.join(repr(k) for k in missing)}"
    if kind == "enum":
        return f"must be one of {', '.join(_shown(v) for v in expected)}, got {_shown(found)}"
    if kind == "const":
        return f"must be {_shown(expected)}, got {_shown(found)}"
    if kind in ("minimum", "exclusiveMinimum"):
        bound = "at least" if kind == "minimum" else "more than"
        return f"must be {bound} {expected}, got {_shown(found)}"
    if kind in ("maximum", "exclusiveMaximum"):
        bound = "at most" if kind == "maximum" else "less than"
        return f"must be {bound} {expected}, got {_shown(found)}"
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters long"
    if kind == "maxLength":
        return f"must be at most {expected} characters long, got {len(found)}"
    if kind in ("minItems", "maxItems"):
        bound = "at least" if kind == "minItems" else "at most"
        return f"must list {bound} {expected} item(s)"
    if kind == "uniqueItems":
        return "must not list the same item twice"
    if kind == "format":
        return f"must be a valid {expected}, got {_shown(found)}"
    if kind == "pattern":
        return f"has the wrong form: {_shown(found)}" + (f" ({hint})" if hint else "")
    return f"is not valid here: {_shown(found)}" + (f" ({hint})" if hint else "")


def _pointer(path: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def read_document(path: Path) -> Any:
    """The parsed content of a YAML or JSON file (YAML is a superset of JSON; ``.json`` is parsed as JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidDocument(f"cannot read the file: {error.strerror or error}", str(path)) from None
    except UnicodeDecodeError:
        raise InvalidDocument("is not UTF-8 text", str(path)) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise InvalidDocument(f"is not valid JSON: {error.msg} at line {error.lineno}", str(path)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise InvalidDocument(f"is not valid YAML: {problem}{where}", str(path)) from None


def plan_documents(content: Any, source: str) -> list[Any]:
    if isinstance(content, dict) and set(content) == {"plans"}:
        content = content["plans"]
    if isinstance(content, dict):
        return [content]
    if isinstance(content, list) and content:
        return content
    raise InvalidDocument("must hold a plan, a list of plans, or {plans: [...]}", source)


def parse_plans(content: Any, source: str) -> list[Plan]:
    """Plans from parsed content, each checked against the plan schema and the core's rules."""
    validator = _validator("plan")
    plans: list[Plan] = []
    seen: set[str] = set()
    for index, document in enumerate(plan_documents(content, source)):
        name = document.get("name") if isinstance(document, dict) else None
        label = f"plan '{name}'" if isinstance(name, str) and name else f"plan #{index + 1}"
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        if errors:
            error = errors[0]
            field = _pointer(error.absolute_path)
            raise InvalidDocument(explain(error), f"{source}: {label}" + (f": {field}" if field else ""))
        try:
            plan = Plan.from_document(document)
        except InvalidDocument as error:
            raise InvalidDocument(str(error), f"{source}: {label}") from None
        if plan.name in seen:
            raise InvalidDocument("is defined twice in the file", f"{source}: {label}")
        seen.add(plan.name)
        plans.append(plan)
    return plans


def load_plans(path: Path) -> list[Plan]:
    return parse_plans(read_document(path), str(path))


def load_plan_files(paths: Iterable[Path]) -> list[Plan]:
    """The plans of several files, each checked, and no plan defined in two of them: the whole set
    is refused on the first error, before anything is written."""
    loaded = [plan for path in paths for plan in load_plans(path)]
    names = [plan.name for plan in loaded]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise InvalidDocument(f"plan '{duplicate}' is defined in more than one file")
    return loaded
