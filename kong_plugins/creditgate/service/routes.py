"""The operators' API over HTTP: every operation of ``Admin`` and the CLI, with the same checks.

Routes are plain functions (FastAPI runs them in its thread pool, since ``Admin`` is synchronous);
bodies are read, size-limited and checked by the ``*_body`` dependencies before a route runs.
"""

from __future__ import annotations

import bisect
import copy
import csv
import io
import json
import re
from collections.abc import Iterator
from itertools import chain, islice
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from creditgate.core.inputs import parse_instant
from creditgate.core.model import MAX_CREDITS, Status
from creditgate.errors import InvalidDocument, NotFound
from creditgate.ops import export
from creditgate.ops.admin import account_view, stream_bound
from creditgate.ops.documents import parse_plans, schema
from creditgate.service import paths  # noqa: F401 - registers the {param:name} convertor
from creditgate.service.body import json_body, validate
from creditgate.service.problems import CODES, ApiProblem
from creditgate.service.state import Service, reader, writer
from creditgate.store.replies import CreditResult, LedgerEntry

MAX_PAGE = 1000
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
LEDGER_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


class Problem(BaseModel):
    """An RFC 9457 problem body (``application/problem+json``); ``code`` is stable."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    field: str | None = None


PROBLEM_DESCRIPTIONS = {
    400: "The body is not JSON (malformed_body), or a required header is missing or bad",
    401: "No token, or a token that is not valid",
    403: "A read-only token on a write",
    404: "Unknown account, plan or dead letter (not_found), or a webhook or events not configured",
    409: "Refused by the current state",
    413: "Body over the size limit",
    415: "Body not sent as application/json",
    422: f"Invalid input; codes: {', '.join(CODES)}",
    500: "Bad data in Redis (data_invalid: the log names the key), or a failure the log explains",
    502: "The receiver did not take the event",
    503: "Redis is unavailable; Retry-After says when to ask again",
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem responses of these statuses, for a route's ``responses``."""
    return {
        status: {
            "model": Problem,
            "description": PROBLEM_DESCRIPTIONS[status],
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }


# What a route can answer, put together from what it does: takes a read or a read-write token (and
# reads Redis), reads a JSON body, has parameters a client can get wrong (tests/service/test_openapi.py
# holds every route's list against what it answers).
READ = _problems(401, 500, 503)
WRITE = _problems(401, 403, 500, 503)
BODY = _problems(400, 413, 415, 422)
PARAMS = _problems(422)

Reader = Annotated[Service, Depends(reader)]
Writer = Annotated[Service, Depends(writer)]
AccountName = Annotated[
    str,
    Path(
        min_length=1, description="The account (a Kong consumer's id, ...); `/` sent as `%2F`, `%` as `%25`"
    ),
]
Since = Annotated[str | None, Query(description="RFC 3339 time, date (00:00 UTC) or Unix seconds")]
Until = Annotated[str | None, Query(description="RFC 3339 time, date (00:00 UTC) or Unix seconds; excluded")]


def _instant(text: str | None, where: str) -> int | None:
    return None if text is None else parse_instant(text, where)


def _body_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


def _request_body(document: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": document}}}}


CREDIT_SCHEMA = _body_schema(
    {
        "amount": {"type": "integer", "minimum": 1, "maximum": MAX_CREDITS},
        "note": {"type": "string", "maxLength": 1000, "description": "Why; kept in the ledger"},
    },
    ["amount"],
)
GRANT_SCHEMA = copy.deepcopy(CREDIT_SCHEMA)
GRANT_SCHEMA["properties"]["create"] = {
    "type": "boolean",
    "default": False,
    "description": "Hold credit for an account that does not exist yet",
}
CAP_SCHEMA = _body_schema({"cap": {"type": "integer", "minimum": 0, "maximum": MAX_CREDITS}}, ["cap"])
CHANGE_PLAN_SCHEMA = _body_schema({"plan": {"type": "string"}}, ["plan"])
STATUS_SCHEMA = _body_schema({"status": {"enum": [s.value for s in Status]}}, ["status"])


def _subscription_schema() -> dict[str, Any]:
    document = copy.deepcopy(schema("subscription"))
    document.pop("$id", None)
    document["required"] = ["plan"]
    document["properties"].pop("account")
    return document


def _plan_body_schema() -> dict[str, Any]:
    plan = copy.deepcopy(schema("plan"))
    plan.pop("$id", None)
    plan.pop("$schema", None)
    return plan


def body_dependency(document: dict[str, Any] | None) -> Any:
    async def dependency(request: Request) -> Any:
        service: Service = request.app.state.service
        content = await json_body(request, service.body_limit)
        if document is not None:
            validate(content, document)
        return content

    return Depends(dependency)


def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Required: the same key applies the change once, however often it is sent",
        ),
    ] = None,
) -> str:
    if key is None:
        raise ApiProblem(
            400,
            "idempotency_key_required",
            "a write that moves credit needs an Idempotency-Key header (1-255 visible ASCII characters): "
            "retrying with the same key is safe, without one a retry could apply twice",
        )
    if not IDEMPOTENCY_KEY.match(key):
        raise ApiProblem(422, "invalid_input", "Idempotency-Key must be 1-255 visible ASCII characters")
    return key


IdempotencyKey = Annotated[str, Depends(idempotency_key)]

router = APIRouter(prefix="/v1")


# Plans


@router.get("/plans", tags=["plans"], responses=READ)
def list_plans(service: Reader) -> list[dict[str, Any]]:
    """Every plan."""
    return [p.to_document() for p in service.admin.plans()]


@router.post(
    "/plans",
    tags=["plans"],
    responses={**WRITE, **BODY},
    openapi_extra=_request_body(
        {"description": "A plan, a list of plans, or {plans: [...]}, as `credit-gate plans apply` reads"}
    ),
)
def apply_plans(service: Writer, content: Annotated[Any, body_dependency(None)]) -> list[dict[str, Any]]:
    """Create or replace plans: every plan is checked before any is written; subscribers get the new
    terms at once."""
    plans = parse_plans(content, "body")
    return [{**plan.to_document(), "accounts_updated": len(service.admin.apply_plan(plan))} for plan in plans]


@router.get("/plans/{name:name}", tags=["plans"], responses={**READ, **_problems(404)})
def get_plan(service: Reader, name: str) -> dict[str, Any]:
    """A plan and how many accounts are subscribed to it."""
    plan = service.admin.plan(name)
    return {**plan.to_document(), "subscribed_accounts": len(service.admin.plan_subscribers(name))}


@router.put(
    "/plans/{name:name}",
    tags=["plans"],
    responses={**WRITE, **BODY},
    openapi_extra=_request_body(_plan_body_schema()),
)
def put_plan(service: Writer, name: str, content: Annotated[Any, body_dependency(None)]) -> dict[str, Any]:
    """Create or replace one plan (the body's name, if given, must be the path's)."""
    if isinstance(content, dict):
        content = {"name": name, **content}
        if content["name"] != name:
            raise InvalidDocument(f"is {content['name']!r}, the path names {name!r}", "name")
    else:
        raise InvalidDocument("must be one plan object", "body")
    (plan,) = parse_plans(content, "body")
    return {**plan.to_document(), "accounts_updated": len(service.admin.apply_plan(plan))}


@router.delete("/plans/{name:name}", tags=["plans"], responses={**WRITE, **PARAMS, **_problems(404, 409)})
def delete_plan(service: Writer, name: str, force: bool = False) -> dict[str, Any]:
    """Delete a plan; 409 while accounts are subscribed to it, unless ``force`` (they keep its terms)."""
    service.admin.delete_plan(name, force=force)
    return {"deleted": name}


@router.get("/plans/{name:name}/subscribers", tags=["plans"], responses={**READ, **_problems(404)})
def plan_subscribers(service: Reader, name: str) -> dict[str, Any]:
    """The accounts subscribed to the plan."""
    service.admin.plan(name)
    return {"plan": name, "accounts": service.admin.plan_subscribers(name)}


# Accounts


@router.get("/accounts", tags=["accounts"], responses={**READ, **PARAMS})
def list_accounts(
    service: Reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    after: Annotated[str | None, Query(description="The `next` of the previous page")] = None,
) -> dict[str, Any]:
    """Accounts in name order, a page at a time: balance, subscription and the current period."""
    names = service.admin.store.account_names()
    start = 0 if after is None else bisect.bisect_right(names, after)
    page = names[start : start + limit]
    now = service.admin.now()
    views = [account_view(s, now).to_json() for s in service.admin.store.account_states(page) if s.exists]
    more = start + limit < len(names)
    return {"accounts": views, "next": page[-1] if more and page else None}


@router.get("/accounts/{account:name}", tags=["accounts"], responses={**READ, **_problems(404)})
def get_account(service: Reader, account: AccountName) -> dict[str, Any]:
    """Balance, the current period's allowance (used, left, end) and the subscription."""
    return service.admin.view(account).to_json()


def _subscription_json(service: Service, account: str) -> dict[str, Any]:
    view = service.admin.view(account)
    return {"account": account, **(view.to_json()["subscription"] or {})}


@router.get(
    "/accounts/{account:name}/subscription", tags=["subscriptions"], responses={**READ, **_problems(404)}
)
def get_subscription(service: Reader, account: AccountName) -> dict[str, Any]:
    view = service.admin.view(account)
    if not view.subscribed:
        raise NotFound(f"account '{account}' has no subscription")
    return _subscription_json(service, account)


@router.put(
    "/accounts/{account:name}/subscription",
    tags=["subscriptions"],
    responses={**WRITE, **BODY, **_problems(404)},
    openapi_extra=_request_body(_subscription_schema()),
)
def put_subscription(
    service: Writer,
    account: AccountName,
    content: Annotated[dict[str, Any], body_dependency(_subscription_schema())],
) -> dict[str, Any]:
    """Subscribe the account to a plan, or re-subscribe it with new times; its balance is kept."""

    def instant(name: str) -> int | None:
        value = content.get(name)
        return None if value is None else parse_instant(str(value), name)

    service.admin.subscribe(
        account,
        content["plan"],
        status=Status(content.get("status", Status.ACTIVE.value)),
        starts_at=instant("starts_at"),
        anchor=instant("anchor"),
        expires_at=instant("expires_at"),
    )
    return _subscription_json(service, account)


@router.put(
    "/accounts/{account:name}/subscription/plan",
    tags=["subscriptions"],
    responses={**WRITE, **BODY, **_problems(404)},
    openapi_extra=_request_body(CHANGE_PLAN_SCHEMA),
)
def change_plan(
    service: Writer,
    account: AccountName,
    content: Annotated[dict[str, Any], body_dependency(CHANGE_PLAN_SCHEMA)],
) -> dict[str, Any]:
    """Move the account to another plan, keeping status, start, anchor, expiry and balance."""
    previous = service.admin.change_plan(account, content["plan"])
    return {**_subscription_json(service, account), "previous_plan": previous}


@router.put(
    "/accounts/{account:name}/subscription/status",
    tags=["subscriptions"],
    responses={**WRITE, **BODY, **_problems(404)},
    openapi_extra=_request_body(STATUS_SCHEMA),
)
def set_status(
    service: Writer,
    account: AccountName,
    content: Annotated[dict[str, Any], body_dependency(STATUS_SCHEMA)],
) -> dict[str, Any]:
    """Set the subscription's status: only active and trialing are charged."""
    previous = service.admin.set_status(account, Status(content["status"]))
    return {"account": account, "status": content["status"], "previous_status": previous}


# Credits


def _credit_answer(response: Response, account: str, result: CreditResult) -> dict[str, Any]:
    """201 for a change applied, 200 for a replay; ``amount`` is what the key's change moved (signed)."""
    if result.applied:
        response.status_code = 201
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return {
        "account": account,
        "amount": result.amount,
        "applied": result.applied,
        "balance": result.balance,
        "ledger_id": result.ledger_id,
    }


@router.post(
    "/accounts/{account:name}/grants",
    tags=["credits"],
    status_code=201,
    responses={
        **WRITE,
        **BODY,
        **_problems(404, 409),
        200: {"description": "The key was already applied: nothing changed"},
    },
    openapi_extra=_request_body(GRANT_SCHEMA),
)
def grant(
    service: Writer,
    account: AccountName,
    key: IdempotencyKey,
    response: Response,
    content: Annotated[dict[str, Any], body_dependency(GRANT_SCHEMA)],
) -> dict[str, Any]:
    """Top up the balance, once per Idempotency-Key (201; a repeat answers 200 with the first ledger id;
    the key sent again for another amount, 409 idempotency_error)."""
    result = service.admin.grant(
        account,
        content["amount"],
        note=content.get("note", ""),
        idempotency_key=key,
        create=bool(content.get("create", False)),
    )
    return _credit_answer(response, account, result)


@router.post(
    "/accounts/{account:name}/adjustments",
    tags=["credits"],
    status_code=201,
    responses={**WRITE, **BODY, **_problems(404, 409), 200: {"description": "The key was already applied"}},
    openapi_extra=_request_body(CREDIT_SCHEMA),
)
def adjust_down(
    service: Writer,
    account: AccountName,
    key: IdempotencyKey,
    response: Response,
    content: Annotated[dict[str, Any], body_dependency(CREDIT_SCHEMA)],
) -> dict[str, Any]:
    """Take credits away, once per Idempotency-Key; 409 with nothing changed if the balance would go below
    zero (conflict) or the key was sent for another change (idempotency_error)."""
    result = service.admin.adjust_down(
        account,
        content["amount"],
        note=content.get("note", ""),
        idempotency_key=key,
    )
    return _credit_answer(response, account, result)


# Pools


@router.get("/accounts/{pool:name}/member-caps", tags=["pools"], responses=READ)
def member_caps(service: Reader, pool: str) -> list[dict[str, Any]]:
    return [{"member": m, "cap": c} for m, c in sorted(service.admin.member_caps(pool).items())]


@router.put(
    "/accounts/{pool:name}/member-caps/{member:name}",
    tags=["pools"],
    responses={**WRITE, **BODY, **_problems(404)},
    openapi_extra=_request_body(CAP_SCHEMA),
)
def set_member_cap(
    service: Writer, pool: str, member: str, content: Annotated[dict[str, Any], body_dependency(CAP_SCHEMA)]
) -> dict[str, Any]:
    """Cap what a member of the pool may draw per period of the pool's plan."""
    service.admin.set_member_cap(pool, member, content["cap"])
    return {"pool": pool, "member": member, "cap": content["cap"]}


@router.delete(
    "/accounts/{pool:name}/member-caps/{member:name}", tags=["pools"], responses={**WRITE, **_problems(404)}
)
def remove_member_cap(service: Writer, pool: str, member: str) -> dict[str, Any]:
    service.admin.set_member_cap(pool, member, None)
    return {"pool": pool, "member": member, "cap": None}


# The ledger


@router.get(
    "/accounts/{account:name}/ledger", tags=["ledger"], responses={**READ, **PARAMS, **_problems(404)}
)
def ledger(
    service: Reader,
    account: AccountName,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    order: Annotated[str, Query(pattern="^(asc|desc)$", description="asc: oldest first")] = "desc",
    cursor: Annotated[str | None, Query(description="The `next` of the previous page")] = None,
) -> dict[str, Any]:
    """The account's ledger entries recorded in ``[since, until)``, a page at a time, newest first by
    default; ``next`` is the cursor of the following page (null on the last)."""
    service.admin.account(account)
    start = stream_bound(_instant(since, "since"), end=False)
    end = stream_bound(_instant(until, "until"), end=True)
    if cursor is not None and not LEDGER_ID.match(cursor):
        raise InvalidDocument("must be the `next` of an earlier page", "cursor")
    entries: list[LedgerEntry]
    if order == "asc":
        if cursor is not None:
            start = "(" + cursor
        entries = list(islice(service.admin.store.ledger(account, start, end, batch=limit + 1), limit + 1))
    else:
        if cursor is not None:
            end = "(" + cursor
        entries = list(reversed(service.admin.store.ledger_tail(account, limit + 1, start, end)))
    more = len(entries) > limit
    entries = entries[:limit]
    return {"entries": [export.record(e) for e in entries], "next": entries[-1].id if more else None}


@router.get("/accounts/{account:name}/ledger/verify", tags=["ledger"], responses={**READ, **_problems(404)})
def verify_ledger(service: Reader, account: AccountName) -> dict[str, Any]:
    """Whether replaying the ledger gives the balance, as of its entry `through` (the newest when the check
    began; null for an empty ledger)."""
    check = service.admin.verify_ledger(account)
    return {
        "account": check.account,
        "balance": check.balance,
        "replayed": check.replayed,
        "entries": check.entries,
        "through": check.through or None,
        "ok": check.ok,
    }


# Usage and export


MEDIA_TYPES = {
    export.Format.JSONL: "application/x-ndjson",
    export.Format.CSV: "text/csv; charset=utf-8",
    export.Format.CLOUDEVENTS: "application/x-ndjson",
    export.Format.CLOUDEVENTS_BATCH: "application/cloudevents-batch+json",
}


def _export_lines(entries: Iterator[LedgerEntry], fmt: export.Format, source: str) -> Iterator[str]:
    """The export's text, entry by entry: the same records as ``export.write``, never held whole."""
    if fmt is export.Format.CSV:
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=export.CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for entry in entries:
            writer.writerow({k: export.spreadsheet_safe(v) for k, v in export.record(entry).items()})
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
        return
    if fmt is export.Format.CLOUDEVENTS_BATCH:
        yield "["
        for index, entry in enumerate(entries):
            yield ("," if index else "") + json.dumps(export.cloudevent(entry, source), separators=(",", ":"))
        yield "]\n"
        return
    for entry in entries:
        line = export.cloudevent(entry, source) if fmt is export.Format.CLOUDEVENTS else export.record(entry)
        yield json.dumps(line, separators=(",", ":")) + "\n"


@router.get(
    "/export",
    tags=["usage"],
    responses={
        **READ,
        **PARAMS,
        **_problems(404),
        200: {"content": {"application/x-ndjson": {}, "text/csv": {}}},
    },
)
def export_ledger(
    service: Reader,
    since: Since = None,
    until: Until = None,
    account: Annotated[list[str] | None, Query(description="Only these accounts (repeatable)")] = None,
    format: Annotated[export.Format, Query()] = export.Format.JSONL,
    source: Annotated[str | None, Query(max_length=512)] = None,
) -> StreamingResponse:
    """Ledger entries for a billing system, streamed (JSON Lines, CSV or CloudEvents); ids are stable, so
    overlapping ranges de-duplicate by id. Entries recorded in ``[since, until)``."""
    since_s, until_s = _instant(since, "since"), _instant(until, "until")
    if since_s is not None and until_s is not None and until_s <= since_s:
        raise InvalidDocument("must be after since", "until")
    for name in account or ():
        service.admin.account(name)  # an unknown account is a 404 before the stream starts
    entries = service.admin.ledger_entries(since=since_s, until=until_s, accounts=account or None)
    # Redis is asked before the answer starts, so that an outage is a 503 and not a stream cut short.
    entries = chain(list(islice(entries, 1)), entries)
    src = source or export.default_source(service.key_prefix)
    return StreamingResponse(_export_lines(entries, format, src), media_type=MEDIA_TYPES[format])
