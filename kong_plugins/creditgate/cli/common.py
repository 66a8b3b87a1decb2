"""What every command shares: exit codes, the connection, option parsers and the Admin it hands over."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from creditgate.core.config import RedisSettings
from creditgate.core.inputs import parse_credits, parse_instant
from creditgate.core.model import Status
from creditgate.errors import Conflict, CreditGateError, InvalidDocument, NotFound, StoreError
from creditgate.ops.admin import Admin
from creditgate.ops.redis_url import describe

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_NOT_FOUND = 2
EXIT_CONFLICT = 3
EXIT_STORE = 4
EXIT_PROBLEMS = 5
EXIT_PIPE_CLOSED = 141

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """An error shown as one line, with its own exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def exit_code(error: CreditGateError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, Conflict):
        return EXIT_CONFLICT
    if isinstance(error, StoreError):
        return EXIT_STORE
    return EXIT_INVALID


def say_error(message: str) -> None:
    click.echo(f"credit-gate: error: {' '.join(message.split())}", err=True)


def say_warning(message: str) -> None:
    """What the operator should know while the command goes on (not an error: the exit code is 0)."""
    click.echo(f"credit-gate: warning: {' '.join(message.split())}", err=True)


def silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (click's test runner): nothing to flush anyway
        pass
    finally:
        os.close(devnull)


class Env:
    """What every command shares: the connection settings, and an Admin made on first use."""

    def __init__(self, settings: RedisSettings, prefix: str, retention: int) -> None:
        self.settings = settings
        self.prefix = prefix
        self.retention = retention
        self._admin: Admin | None = None

    @property
    def where(self) -> str:
        return describe(self.settings)

    @property
    def admin(self) -> Admin:
        if self._admin is None:
            self._admin = Admin.connect(self.settings, self.prefix, ledger_retention=self.retention)
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def parsed(
    parse: Callable[[str, str], int], exact: bool = False
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that parses an option's text strictly, or fails as a usage error (exit 1).

    ``exact``: the text must be the value alone, no spaces around it (" 7" is a typo, not 7).
    """

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        if exact and str(value) != str(value).strip():
            raise click.BadParameter(
                f"must be a whole number of credits in digits, without spaces, got {str(value)!r}",
                ctx=ctx,
                param=param,
            )
        try:
            return parse(str(value), "")
        except InvalidDocument as error:
            raise click.BadParameter(str(error), ctx=ctx, param=param) from None

    return callback


# Whole credits in digits: "1.5", "1e3", "true" and "-2" are refused, not coerced.
CREDITS = parsed(lambda text, where: parse_credits(text, where, minimum=1), exact=True)
# RFC 3339 (or a date, meaning 00:00 UTC) or Unix seconds.
INSTANT = parsed(parse_instant)
STATUS = click.Choice([s.value for s in Status])
# A pool member's cap: whole credits, 0 included (the member may draw nothing).
CAP = parsed(lambda text, where: parse_credits(text, where, minimum=0), exact=True)


def json_option(function: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
    )(function)


def admin_of(ctx: click.Context) -> Admin:
    env = ctx.find_object(Env)
    assert env is not None
    return env.admin


def pass_admin(function: F) -> F:
    """Hand the command an Admin (connected on first use) as its first argument."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(admin_of(click.get_current_context()), *args, **kwargs)

    return wrapper  # type: ignore[return-value]
