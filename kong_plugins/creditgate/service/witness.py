"""Kong's bypass reports: the requests that reached the fail-closed dead end carrying the gate's mark.

With ``bypass_witness`` on (core/witness.py), the gate marks each request to the upstream with its
charge's token before charging. A request the gate lets through has its mark blanked; one that reached
the dead end instead (the plugin server died after charging, before telling Kong where to send it)
still carries it. Kong's ``http-log`` plugin on the dead-end route posts each such request's log here
(docs/fail-closed.md), and each marked charge is voided (store/voids.py): given back when it was made,
else its token is marked so that a charge still on its way never charges. A report counts once
whatever Kong retries: a charge is given back at most once (settle.lua), a void marker is idempotent.

Behind a witness token (``CREDIT_GATE_WITNESS_TOKENS``: this route only) or a read-write token.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from creditgate.core.witness import HEADER, read_mark
from creditgate.errors import StoreError
from creditgate.service.auth import Access
from creditgate.service.body import parse_json, read_body, require_json_type
from creditgate.service.problems import ApiProblem
from creditgate.service.routes import _problems
from creditgate.service.state import Bearer, Service, service_of

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")

DEAD_END_STATUS = 503  # what the dead end answers (kong.yml's request-termination)
MAX_ENTRIES = 1000  # log entries a report at most (http-log's queue sends batches of max_batch_size)
_HEADER = HEADER.lower()  # Kong's serializer gives request headers lower-cased


def witness(request: Request, _declared: Bearer = None) -> Service:
    """A dependency: the caller holds a witness token or a read-write token."""
    service = service_of(request)
    service.auth.require(request, Access.WITNESS)
    return service


Witness = Annotated[Service, Depends(witness)]


def _mark_of(entry: Any) -> object:
    """The mark in one of Kong's log entries (``request.headers``), or None: also when the dead end did
    not answer it (``response.status`` is not its 503; kong.yml's ip-restriction answers 403 to a
    request that reached the dead-end route from anywhere but Kong itself)."""
    if not isinstance(entry, dict):
        return None
    response = entry.get("response")
    if not isinstance(response, dict) or response.get("status") != DEAD_END_STATUS:
        return None
    request = entry.get("request")
    headers = request.get("headers") if isinstance(request, dict) else None
    return headers.get(_HEADER) if isinstance(headers, dict) else None


def _void_all(service: Service, marks: list[tuple[str, str]]) -> dict[str, int]:
    store = service.admin.store
    counts: dict[str, int] = {}
    for account, token in marks:
        try:
            outcome = store.voider.void(account, token, service.admin.ledger_retention)
        except StoreError as error:
            # Kong retries a report it could not deliver: answered 503, the whole report comes again.
            raise ApiProblem(503, "store_unavailable", f"Redis failed: {error}") from error
        if outcome == "given_back":
            log.warning(
                "credit-gate: charge %s of '%s' given back: its request reached the fail-closed dead end",
                token,
                account,
            )
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


LOG_ENTRY = {"type": "object", "description": "One of Kong's log entries (its serializer's shape)"}
REPORT = {"oneOf": [LOG_ENTRY, {"type": "array", "items": LOG_ENTRY, "maxItems": MAX_ENTRIES}]}


@router.post(
    "/kong/bypassed",
    tags=["kong"],
    responses=_problems(400, 401, 403, 413, 415, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [LOG_ENTRY, {"type": "array", "items": LOG_ENTRY, "maxItems": MAX_ENTRIES}]
                    }
                }
            },
        }
    },
)
async def bypassed(request: Request, service: Witness) -> dict[str, Any]:
    """Kong's ``http-log`` entries of requests that reached the fail-closed dead end (one entry or an
    array): each that carries the gate's mark (``X-Credit-Gate-Witness``) has its charge voided. Answers
    how many entries came, how many were unmarked (blank, absent or not a mark) and each outcome:
    ``given_back`` (the charge was refunded), ``voided`` (no charge yet: none will be made), ``already``
    (given back before)."""
    require_json_type(request)
    body = parse_json(await read_body(request, service.body_limit))
    entries = body if isinstance(body, list) else [body]
    if len(entries) > MAX_ENTRIES:
        raise ApiProblem(400, "invalid_input", f"{len(entries)} entries; at most {MAX_ENTRIES} a report")
    marks = [mark for mark in map(read_mark, map(_mark_of, entries)) if mark is not None]
    outcomes = await run_in_threadpool(_void_all, service, marks)
    return {"entries": len(entries), "unmarked": len(entries) - len(marks), "outcomes": outcomes}


__all__ = ["MAX_ENTRIES", "router"]
