"""Ledger export for billing: JSON Lines, CSV and CloudEvents, with ids that are stable across exports."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest

from creditgate.cli import EXIT_INVALID
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.ops.export import CSV_COLUMNS
from creditgate.store.store import RedisStore
from tests.cli_support import Cli

JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z

# The parts of the CloudEvents 1.0 JSON format a consumer relies on (spec: json-format.md).
CLOUDEVENT = {
    "type": "object",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"const": "1.0"},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string"},
        "time": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
        "datacontenttype": {"const": "application/json"},
        "data": {"type": "object"},
    },
}


@pytest.fixture
def cli(settings: RedisSettings, admin: Admin, store: RedisStore) -> Cli:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro", starts_at=JAN_1)
    admin.subscribe("a/b%c", "pro", starts_at=JAN_1)
    admin.grant("acme", 100, note="top-up", idempotency_key="in_1")
    admin.grant("a/b%c", 10)
    store.charge(ChargeRequest("acme", 3, now=JAN_1 + 60, route="route:r1"))
    return Cli(settings)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_jsonl_has_one_entry_per_line_with_its_figures(cli: Cli) -> None:
    entries = lines(cli.ok("export", "--account", "acme").stdout)
    assert [(e["kind"], e["amount"], e["balance"]) for e in entries] == [
        ("grant", 100, 100),
        ("period_reset", 0, 100),
        ("charge", -3, 97),
    ]
    charge = entries[-1]
    assert charge["route"] == "route:r1" and charge["cost"] == 3 and charge["time"] == "2026-01-01T00:01:00Z"
    assert charge["id"] == f"acme/{charge['ledger_id']}"
    assert entries[0]["note"] == "top-up" and entries[0]["key"] == "in_1"


def test_the_summary_goes_to_stderr_and_the_data_alone_to_stdout(cli: Cli) -> None:
    result = cli.ok("export")
    assert result.stderr == "credit-gate: exported 4 ledger entries\n"
    assert len(lines(result.stdout)) == 4


def split_global_id(value: str) -> tuple[str, str]:
    """The account and ledger id of an export's id, as a billing system splits it: the account is
    percent-encoded before the last '/'."""
    tag, _, stream_id = value.rpartition("/")
    return unquote(tag), stream_id


def test_ids_are_the_same_in_every_export_and_name_their_account(cli: Cli) -> None:
    first = [e["id"] for e in lines(cli.ok("export").stdout)]
    second = [e["id"] for e in lines(cli.ok("export").stdout)]
    assert first == second and len(set(first)) == len(first)
    odd = [i for i in first if i.startswith("a%2Fb%25c/")]
    assert len(odd) == 1
    assert split_global_id(odd[0])[0] == "a/b%c"


def test_csv_has_a_header_and_fixed_columns(cli: Cli) -> None:
    rows = list(csv.DictReader(io.StringIO(cli.ok("export", "--format", "csv", "--account", "acme").stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert (rows[2]["kind"], rows[2]["amount"], rows[2]["route"], rows[2]["note"]) == (
        "charge",
        "-3",
        "route:r1",
        "",
    )


def test_cloudevents_are_valid_events_with_the_account_as_subject(cli: Cli) -> None:
    events = lines(cli.ok("export", "--format", "cloudevents", "--account", "acme").stdout)
    for event in events:
        jsonschema.validate(event, CLOUDEVENT)
    charge = events[-1]
    assert charge["type"] == "credit-gate.ledger.charge"
    assert charge["source"] == "urn:credit-gate:credit-gate"
    assert charge["subject"] == "acme"
    assert charge["id"].startswith("acme/")
    assert charge["data"]["amount"] == -3 and "id" not in charge["data"]


def test_a_cloudevents_batch_is_one_json_array_with_a_chosen_source(cli: Cli) -> None:
    out = cli.ok("export", "--format", "cloudevents-batch", "--source", "//billing/eu-1").stdout
    batch = json.loads(out)
    assert isinstance(batch, list) and len(batch) == 4
    assert {e["source"] for e in batch} == {"//billing/eu-1"}


def test_ranges_select_on_the_time_entries_were_recorded_and_consecutive_ranges_never_miss_one(
    cli: Cli, admin: Admin
) -> None:
    before = lines(cli.ok("export").stdout)
    cut = int(time.time()) + 1
    time.sleep(max(cut - time.time(), 0) + 0.01)
    admin.grant("acme", 7, note="after the cut")
    older = lines(cli.ok("export", "--until", str(cut)).stdout)
    newer = lines(cli.ok("export", "--since", str(cut)).stdout)
    assert [e["id"] for e in older] == [e["id"] for e in before]
    assert [e["note"] for e in newer] == ["after the cut"]


def test_export_to_a_file_writes_it_whole(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "ledger.jsonl"
    cli.ok("export", "--output", str(target))
    assert len(lines(target.read_text())) == 4
    assert not (tmp_path / "ledger.jsonl.partial").exists()


def test_an_until_before_since_is_refused(cli: Cli) -> None:
    result = cli.run("export", "--since", "2026-02-01", "--until", "2026-01-01")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == "credit-gate: error: until: must be after since\n"


def test_json_flag_is_jsonl(cli: Cli) -> None:
    assert cli.ok("export", "--json").stdout == cli.ok("export").stdout


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted() -> None:
    from creditgate.ops.export import spreadsheet_safe

    assert spreadsheet_safe('=HYPERLINK("http://evil")') == '\'=HYPERLINK("http://evil")'
    assert spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert spreadsheet_safe("invoice 1042") == "invoice 1042"
    assert spreadsheet_safe(-5) == -5
