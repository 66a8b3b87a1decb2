"""Names in URL paths: any account name, ``/`` and ``%`` included, percent-encoded as one segment.

An ASGI server hands the router a decoded path, where ``acme%2Fteam`` has become ``acme/team``: two
segments, and the route no longer matches. So the router is given the raw path decoded except for
``%2F`` and ``%25``, and every name parameter is typed ``{param:name}``, whose convertor decodes those
two. A name is thus always sent with ``/`` as ``%2F`` and ``%`` as ``%25`` (``urllib.parse.quote(name,
safe="")`` does both); an unencoded ``/`` still separates segments, so no path is ambiguous.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor

KEPT = re.compile(rb"%(?:2[fF]|25)")


class NameConvertor(Convertor[str]):
    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)  # only %2F and %25 are left to decode (see routed_path)

    def to_string(self, value: str) -> str:
        return value.replace("%", "%25").replace("/", "%2F")


register_url_convertor("name", NameConvertor())


def routed_path(raw: bytes) -> str:
    """The raw path decoded, except ``%2F`` and ``%25`` (kept, upper-cased)."""
    pieces: list[bytes] = []
    last = 0
    for match in KEPT.finditer(raw):
        pieces.append(unquote_to_bytes(raw[last : match.start()]))
        pieces.append(match.group().upper())
        last = match.end()
    pieces.append(unquote_to_bytes(raw[last:]))
    return b"".join(pieces).decode("utf-8", "replace")


class KeepEncodedSlashes:
    """ASGI middleware: route on ``routed_path(raw_path)``, so an encoded name stays one segment."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and isinstance(raw, bytes) and b"%" in raw:
            scope = {**scope, "path": routed_path(raw.split(b"?", 1)[0])}
        await self.app(scope, receive, send)
