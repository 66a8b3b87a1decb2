"""One vocabulary of reasons: the Reason enum declares each code with its status and title, and
everything a client or an operator reads about reasons follows from it or is checked against it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from creditgate.core.decision import PAYMENT_REASONS, STATUS, TITLES, Reason, failure, refusal
from creditgate.core.problem_schema import to_json_schema
from tests.core.test_decision import BASE, result, validate_problem

ROOT = Path(__file__).resolve().parents[2]
NOT_PAYMENT = [reason for reason in Reason if reason not in PAYMENT_REASONS]


def test_the_committed_problem_schema_is_generated_from_the_enum() -> None:
    committed = json.loads((ROOT / "schemas" / "problem.schema.json").read_text())
    assert committed == to_json_schema(), "run: make schema"


def test_the_problem_schema_lists_every_reason_and_the_payment_reasons_for_402() -> None:
    schema = to_json_schema()
    assert schema["properties"]["reason"]["enum"] == [reason.value for reason in Reason]
    assert schema["properties"]["status"]["enum"] == [401, 402, 414, 500, 503]
    payment = schema["allOf"][2]["then"]["properties"]["reason"]["enum"]
    assert payment == [reason.value for reason in Reason if reason.status == 402]


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_every_reason_has_a_stable_code_a_status_and_a_title(reason: Reason) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", reason.value)
    assert Reason(reason.value) is reason
    assert reason.status in (401, 402, 414, 500, 503)
    assert TITLES[reason] == reason.heading and reason.heading[0].isupper()
    assert (reason in STATUS) == (reason.status != 402)


def test_no_two_reasons_share_a_title() -> None:
    assert len(set(TITLES.values())) == len(Reason)


@pytest.mark.parametrize("reason", PAYMENT_REASONS, ids=lambda r: r.value)
def test_every_payment_reason_is_a_valid_402_with_its_title(reason: Reason) -> None:
    charge = result(reason, member_used=9, member_cap=10)
    problem = refusal(charge, type_base=BASE, payment_url=None, entitled=["team"])
    assert problem.status == 402 == problem.body["status"]
    assert problem.body["title"] == reason.heading and problem.body["reason"] == reason.value
    validate_problem(problem.body)


@pytest.mark.parametrize("reason", NOT_PAYMENT, ids=lambda r: r.value)
def test_every_other_reason_is_a_valid_problem_with_its_status_and_title(reason: Reason) -> None:
    problem = failure(reason, "What happened.", type_base=BASE)
    assert problem.status == reason.status == problem.body["status"]
    assert problem.body["title"] == reason.heading and problem.body["type"] == BASE + reason.value
    validate_problem(problem.body)


def test_the_gate_unavailable_body_kong_answers_is_the_enums() -> None:
    body = json.loads(_gate_unavailable_termination()["body"])
    reason = Reason.GATE_UNAVAILABLE
    assert (body["reason"], body["status"], body["title"]) == (reason.value, reason.status, reason.heading)
    validate_problem(body)


def _gate_unavailable_termination() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "kong.yml").read_text())
    for service in document["services"]:
        for plugin in service.get("plugins", []) + [
            p for route in service.get("routes", []) for p in route.get("plugins", [])
        ]:
            if plugin["name"] == "request-termination" and "gate_unavailable" in plugin["config"]["body"]:
                return dict(plugin["config"])
    raise AssertionError("kong.yml no longer answers gate_unavailable")


def test_the_readme_table_names_every_reason_with_its_status_in_order() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", readme, flags=re.MULTILINE)
    assert [(code, int(status)) for code, status in rows] == [(r.value, r.status) for r in Reason]
