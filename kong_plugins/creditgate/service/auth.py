"""Bearer tokens: read-only and read-write, from the environment or files, compared in constant time.

There is no default token. Without any, the service refuses to start unless it listens on loopback
only, where it runs open and says so (a developer's machine); see ``check_exposure``.

A token is taken whole, whatever it holds: only commas and whitespace separate tokens. ``#`` begins a
comment only as the first character of a line in a token file, never in the environment and never
inside a token (an environment value is no shell line: cutting ``abc#def`` at ``#`` made ``abc``,
its prefix, a valid token).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from creditgate.errors import ConfigError
from creditgate.service.problems import ApiProblem

MIN_TOKEN_LENGTH = 16
ADMIN_TOKENS_ENV = "CREDIT_GATE_ADMIN_TOKENS"
READ_TOKENS_ENV = "CREDIT_GATE_READ_TOKENS"
# Kong's bypass reports (service/witness.py) only: such a token reads nothing and changes nothing else.
WITNESS_TOKENS_ENV = "CREDIT_GATE_WITNESS_TOKENS"


class Access(int, enum.Enum):
    WITNESS = 0  # may only report requests that reached the fail-closed dead end
    READ = 1
    WRITE = 2


def _split(text: str, source: str) -> list[str]:
    """The tokens of an environment value: separated by commas or whitespace, each kept whole."""
    tokens = text.replace(",", " ").split()
    for token in tokens:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{source}: a token must be at least {MIN_TOKEN_LENGTH} characters")
    return tokens


def _split_file(text: str, source: str) -> list[str]:
    """A token file's tokens: a line whose first non-blank character is ``#`` is a comment."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return _split("\n".join(lines), source)


def _bytes(token: str) -> bytes:
    """The token's bytes as a client sends them: UTF-8, and the environment's own bytes where they
    are not UTF-8 (Python keeps those as surrogates)."""
    return token.encode("utf-8", "surrogateescape")


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the token file {path}: {error}") from None


@dataclass(frozen=True)
class Tokens:
    """The accepted tokens; several of each kind, so that one can be rotated without downtime."""

    admin: tuple[bytes, ...] = ()
    read: tuple[bytes, ...] = ()
    witness: tuple[bytes, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.admin or self.read or self.witness)

    @classmethod
    def load(
        cls,
        *,
        admin_files: Iterable[Path] = (),
        read_files: Iterable[Path] = (),
        environ: dict[str, str] | None = None,
    ) -> Tokens:
        env = os.environ if environ is None else environ
        admin = _split(env.get(ADMIN_TOKENS_ENV, ""), ADMIN_TOKENS_ENV)
        read = _split(env.get(READ_TOKENS_ENV, ""), READ_TOKENS_ENV)
        for path in admin_files:
            admin += _split_file(_read_file(path), str(path))
        for path in read_files:
            read += _split_file(_read_file(path), str(path))
        witness = _split(env.get(WITNESS_TOKENS_ENV, ""), WITNESS_TOKENS_ENV)
        return cls(tuple(map(_bytes, admin)), tuple(map(_bytes, read)), tuple(map(_bytes, witness)))

    def access(self, presented: bytes) -> Access | None:
        """The access a presented token grants. Every token is compared, whatever matched, so the time
        taken says nothing about which token (or which prefix of one) is right."""
        granted: Access | None = None
        for token in self.admin:
            if hmac.compare_digest(token, presented):
                granted = Access.WRITE
        for token in self.read:
            if hmac.compare_digest(token, presented) and granted is None:
                granted = Access.READ
        for token in self.witness:
            if hmac.compare_digest(token, presented) and granted is None:
                granted = Access.WITNESS
        return granted


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(tokens: Tokens, host: str) -> str | None:
    """Raise when the service would be open to the network; return a warning when it is open on loopback."""
    if tokens.configured:
        return None
    if not is_loopback(host):
        raise ConfigError(
            f"no API token is configured and the service would listen on {host}: set {ADMIN_TOKENS_ENV} "
            f"(read-write) and/or {READ_TOKENS_ENV} (read-only), or --admin-token-file/--read-token-file; "
            "without tokens it runs only on a loopback address"
        )
    return (
        f"no API token is configured: the API is open to anyone who can reach {host}, with read-write "
        f"access; set {ADMIN_TOKENS_ENV} before exposing it"
    )


@dataclass
class Authenticator:
    tokens: Tokens
    open_access: bool = field(default=False)  # no tokens, loopback only (check_exposure said so)

    def require(self, request: Request, needed: Access) -> Access:
        if self.open_access:
            return Access.WRITE
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiProblem(
                401,
                "unauthenticated",
                "send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="credit-gate"'},
            )
        # Starlette decodes header bytes as Latin-1: encoding back gives the bytes the client sent.
        granted = self.tokens.access(value.strip().encode("latin-1"))
        if granted is None:
            raise ApiProblem(
                401,
                "unauthenticated",
                "the token is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="credit-gate", error="invalid_token"'},
            )
        if needed is Access.WITNESS and granted is Access.READ:
            raise ApiProblem(403, "forbidden", "a witness or read-write token is needed")
        if granted < needed:
            what = "read-only" if granted is Access.READ else "a witness token (bypass reports only)"
            raise ApiProblem(403, "forbidden", f"this token is {what}; a read-write token is needed")
        return granted
