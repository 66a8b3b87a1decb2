"""The bypass witness: what tells a charge whose request Kong never let through (issue: a plugin server
killed between the charge and Kong's next message) from one whose request was served.

With ``bypass_witness`` on, the gate sends Kong's request id with the charge (``request_id_of``: one PDK
call, so that a request whose event Kong runs again on a respawned server is charged once) and marks
the request to the upstream, before it charges, with the charge's random token and the paying account
(``HEADER``: one more PDK call). The token is not Kong's request id, which Kong 3.5+ shows the client
(``X-Kong-Request-Id``). A request the gate lets through has its mark cleared once its upstream is named
(one more PDK call), so that no API echoes a token back to a client. A request
the gate never finished (the plugin server died after the charge) carries it to the fail-closed dead
end, whose Kong log plugin (``http-log``) reports it to ``credit-gate serve``; serve
voids that charge (gives it back, or marks the token so that a charge still on its way never charges).
Kong's own code, not the plugin server, carries the mark from the first hop to the dead end, so a dead
server cannot lose it. The dead end must be reachable only from Kong itself (docs/fail-closed.md).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

HEADER = "X-Credit-Gate-Witness"
_TOKEN = re.compile(r"[0-9a-f]{16}")
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
MAX_ACCOUNT = 4096  # characters of a percent-encoded account name in a mark


def request_id_of(value: object) -> str:
    """nginx's ``$request_id`` (32 random hex digits, one per request, the same when Kong runs the
    request's event again on a respawned server), or "" when it is not one."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else ""


def mark(account: str, token: str) -> str:
    """The mark's value: ``<token> <account, percent-encoded>``."""
    return f"{token} {quote(account, safe='')}"


def read_mark(value: object) -> tuple[str, str] | None:
    """(account, token) from a mark; None for anything else (blank, forged shapes, too long)."""
    if isinstance(value, list):  # a header sent twice: only one mark is trusted, none when they differ
        if len(set(map(str, value))) != 1:
            return None
        value = value[0]
    if not isinstance(value, str) or len(value) > MAX_ACCOUNT + 17:
        return None
    token, _, encoded = value.partition(" ")
    if not _TOKEN.fullmatch(token) or not encoded or " " in encoded:
        return None
    try:
        account = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return None
    return (account, token) if account else None


__all__ = ["HEADER", "mark", "read_mark", "request_id_of"]
