"""``credit-gate``: plans, subscriptions, credits, the ledger and usage, from a terminal or a script.

A thin layer over ``creditgate.admin.Admin``: parse, call, print. Tables for people, ``--json`` for
scripts, and one line on stderr when something fails, with what to do about it.

Exit codes:
    0  done
    1  invalid input: a bad option, argument, file or value
    2  not found: an unknown plan or account
    3  conflict: refused by the current state (plan in use, balance too low)
    4  store unavailable: Redis unreachable, too slow, or refusing the credentials
    5  done, with problems reported: rows rejected by an import, ledgers that do not replay
  141  stopped because the reader closed the output (``export ... | head``): 128 + SIGPIPE, as a shell
       reports any program that a pipe's reader stopped early
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich import box
from rich.bar import Bar
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from creditgate import deploy, export, importer
from creditgate.admin import AccountView, Admin
from creditgate.core.config import RedisSettings
from creditgate.core.inputs import format_instant, parse_credits, parse_instant
from creditgate.core.model import Plan, Status
from creditgate.core.periods import DAY_SECONDS
from creditgate.core.schema import between, default
from creditgate.documents import load_plans
from creditgate.errors import ConfigError, Conflict, CreditGateError, InvalidDocument, NotFound, StoreError
from creditgate.redis_url import describe, settings_from_url
from creditgate.store.redis_store import LedgerEntry

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_NOT_FOUND = 2
EXIT_CONFLICT = 3
EXIT_STORE = 4
EXIT_PROBLEMS = 5
EXIT_PIPE_CLOSED = 141

F = TypeVar("F", bound=Callable[..., Any])
NUMERIC_COLUMNS = {
    "balance",
    "replayed",
    "entries",
    "amount",
    "allowance",
    "requests",
    "credits",
    "refused",
    "refunded",
    "would charge",
    "would refuse",
    "cap per period",
}
# Free text folds onto more lines when a table is wider than the screen; everything else (ids, names,
# times, numbers) never does: an account id split over three lines cannot be copied or grepped.
FOLDING_COLUMNS = {"title", "detail", "error", "value"}


class Failure(click.ClickException):
    """An error shown as one line, with its own exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _exit_code(error: CreditGateError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, Conflict):
        return EXIT_CONFLICT
    if isinstance(error, StoreError):
        return EXIT_STORE
    return EXIT_INVALID


def _say_error(message: str) -> None:
    click.echo(f"credit-gate: error: {' '.join(message.split())}", err=True)


class App(click.Group):
    """The command group: turns every failure into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`| head`): not an error of the input. Later writes (and Python's
            # flush at exit) go nowhere instead of failing again.
            _silence_stdout()
            raise click.exceptions.Exit(EXIT_PIPE_CLOSED) from None
        except StoreError as error:
            where = ctx.obj.where if isinstance(ctx.obj, Env) else "the configured Redis"
            detail = str(error).removeprefix("Redis failed: ").rstrip(". ")
            if _is_credentials_error(detail):
                hint = (
                    "Redis refused the credentials or asks for some: give the ACL user and password "
                    "it expects (see `credit-gate --help` for the options)"
                )
            else:
                hint = (
                    "check that it runs and that --redis-url (or CREDIT_GATE_REDIS_URL) and the TLS "
                    "options point to it"
                )
            raise Failure(f"cannot use Redis at {where} ({detail}); {hint}", EXIT_STORE) from error
        except CreditGateError as error:
            raise Failure(str(error), _exit_code(error)) from error
        finally:
            if isinstance(ctx.obj, Env):
                ctx.obj.close()

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else EXIT_OK
        except Failure as error:
            _say_error(error.format_message())
            code = error.code
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "credit-gate"
            _say_error(f"{error.format_message()} (see `{command} --help`)")
            code = EXIT_INVALID
        except click.ClickException as error:
            _say_error(error.format_message())
            code = EXIT_INVALID
        except click.Abort:
            _say_error("interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (click's test runner): nothing to flush anyway
        pass
    finally:
        os.close(devnull)


_CREDENTIAL_ERRORS = ("noauth", "wrongpass", "authenticat", "invalid username-password", "noperm")


def _is_credentials_error(detail: str) -> bool:
    lowered = detail.lower()
    return any(marker in lowered for marker in _CREDENTIAL_ERRORS)


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


def _parsed(
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
CREDITS = _parsed(lambda text, where: parse_credits(text, where, minimum=1), exact=True)
# RFC 3339 (or a date, meaning 00:00 UTC) or Unix seconds.
INSTANT = _parsed(parse_instant)
STATUS = click.Choice([s.value for s in Status])


def json_option(function: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
    )(function)


def console() -> Console:
    """Standard output for people; tables keep their width when piped into a file or a pager."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=int(os.environ.get("COLUMNS", "120")), no_color=True)
    return out


def show(grid: Table, out: Console | None = None) -> None:
    """Print a table; when even its folded form is wider than the screen, print it wider rather than
    split an id or a time (a terminal then wraps whole lines, which copy and grep as they are)."""
    out = out or console()
    for column in grid.columns:
        cells = [column.header, *column.cells]
        widths = [cell_len(cell) for cell in cells if isinstance(cell, str)]
        if len(widths) < len(cells):
            continue  # a chart's bars: widths of their own
        if column.no_wrap:  # rich measures a cell by its longest word; a no-wrap cell needs all of it
            column.min_width = max(widths)
        else:  # free text folds, but keeps a readable width
            column.min_width = min(max(widths), 20)
    # table()'s layout: one space of padding each side of a column but not at the edges, and one
    # separator between two columns.
    needed = sum(column.min_width or 0 for column in grid.columns) + 3 * (len(grid.columns) - 1)
    if needed > out.width:  # rich never prints wider than its console: a wider one, same output
        out = Console(highlight=False, width=needed, no_color=out.no_color, file=out.file)
    out.print(grid, crop=False)


def credits(amount: int) -> str:
    return f"{amount} credit" if amount == 1 else f"{amount} credits"


def yes_no(value: bool) -> str:
    """How every table shows a flag (prepaid, ok): the same words everywhere."""
    return "yes" if value else "no"


def conflicting_formats(ctx: click.Context, fmt: str, as_json: bool, json_format: str) -> None:
    """--json and a --format given on the command line must agree, or it is a usage error."""
    explicit = ctx.get_parameter_source("fmt") is click.core.ParameterSource.COMMANDLINE
    if as_json and explicit and fmt != json_format:
        raise click.UsageError(f"--json and --format {fmt} conflict: give one of them", ctx=ctx)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(*columns: str, title: str | None = None) -> Table:
    grid = Table(
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        show_header=columns[:2] != ("field", "value"),  # a record reads better without a header
    )
    for column in columns:
        numeric = column in NUMERIC_COLUMNS
        folds = column in FOLDING_COLUMNS
        grid.add_column(
            column,
            justify="right" if numeric else "left",
            overflow="fold" if folds else "crop",  # `show` makes room: nothing is cropped
            no_wrap=not folds,
        )
    return grid


def when(epoch: int | None, none: str = "-") -> str:
    return format_instant(epoch) or none


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


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--redis-url",
    envvar="CREDIT_GATE_REDIS_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="redis://[user:password@]host:port/db, rediss:// for TLS, or unix:///path/to/redis.sock?db=N. "
    "Env: CREDIT_GATE_REDIS_URL.",
)
@click.option(
    "--redis-password-file",
    envvar="CREDIT_GATE_REDIS_PASSWORD_FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the Redis password (one line), instead of a password in the URL, where `ps` "
    "would show it. Env: CREDIT_GATE_REDIS_PASSWORD_FILE.",
)
@click.option(
    "--key-prefix",
    envvar="CREDIT_GATE_KEY_PREFIX",
    default=default("key_prefix"),
    show_default=True,
    help="The plugin's key_prefix. Env: CREDIT_GATE_KEY_PREFIX.",
)
@click.option(
    "--ssl/--no-ssl",
    default=None,
    envvar="CREDIT_GATE_REDIS_SSL",
    help="Use TLS (default: as the URL's scheme says). Env: CREDIT_GATE_REDIS_SSL.",
)
@click.option(
    "--ssl-verify/--no-ssl-verify",
    default=True,
    show_default=True,
    envvar="CREDIT_GATE_REDIS_SSL_VERIFY",
    help="Verify Redis's TLS certificate. Env: CREDIT_GATE_REDIS_SSL_VERIFY.",
)
@click.option(
    "--server-name",
    envvar="CREDIT_GATE_REDIS_SERVER_NAME",
    help="Name to verify in Redis's certificate (SNI). Env: CREDIT_GATE_REDIS_SERVER_NAME.",
)
@click.option(
    "--ca-file",
    envvar="CREDIT_GATE_REDIS_CA_FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM file of the CA that signed Redis's certificate. Env: CREDIT_GATE_REDIS_CA_FILE.",
)
@click.option(
    "--sentinel-master",
    envvar="CREDIT_GATE_REDIS_SENTINEL_MASTER",
    help="Sentinel: the master's name; the URL then gives only credentials, database and TLS. "
    "Env: CREDIT_GATE_REDIS_SENTINEL_MASTER.",
)
@click.option(
    "--sentinel",
    "sentinels",
    multiple=True,
    metavar="HOST:PORT",
    envvar="CREDIT_GATE_REDIS_SENTINELS",
    help="Sentinel: a sentinel to ask for the master (repeatable; env: space-separated).",
)
@click.option(
    "--sentinel-username", envvar="CREDIT_GATE_REDIS_SENTINEL_USERNAME", help="Sentinels' ACL user."
)
@click.option(
    "--sentinel-password",
    envvar="CREDIT_GATE_REDIS_SENTINEL_PASSWORD",
    help="Sentinels' password (prefer the env var CREDIT_GATE_REDIS_SENTINEL_PASSWORD).",
)
@click.option(
    "--cluster-node",
    "cluster_nodes",
    multiple=True,
    metavar="HOST:PORT",
    envvar="CREDIT_GATE_REDIS_CLUSTER_NODES",
    help="Redis Cluster: a seed node (repeatable; env: space-separated); the URL then gives only "
    "credentials and TLS.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.001, 60),
    default=2.0,
    show_default=True,
    envvar="CREDIT_GATE_REDIS_TIMEOUT",
    help="Seconds to wait for Redis to connect or answer. Env: CREDIT_GATE_REDIS_TIMEOUT.",
)
@click.option(
    "--ledger-retention",
    type=click.IntRange(*between("ledger_retention")),
    default=default("ledger_retention"),
    show_default=True,
    envvar="CREDIT_GATE_LEDGER_RETENTION",
    help="Ledger entries kept per account: the plugin's ledger_retention. Env: CREDIT_GATE_LEDGER_RETENTION.",
)
@click.version_option(package_name="credit-gate", prog_name="credit-gate")
@click.pass_context
def cli(
    ctx: click.Context,
    redis_url: str,
    redis_password_file: str | None,
    key_prefix: str,
    ssl: bool | None,
    ssl_verify: bool,
    server_name: str | None,
    ca_file: str | None,
    sentinel_master: str | None,
    sentinels: tuple[str, ...],
    sentinel_username: str | None,
    sentinel_password: str | None,
    cluster_nodes: tuple[str, ...],
    timeout: float,
    ledger_retention: int,
) -> None:
    """Run credit-gate's plans, subscriptions and credits.

    Exit codes: 0 done, 1 invalid input, 2 not found, 3 conflict, 4 Redis unavailable,
    5 done with problems reported (rejected import rows, a ledger that does not replay).
    """
    try:
        settings = settings_from_url(
            redis_url,
            password=_read_password(redis_password_file) if redis_password_file else None,
            ssl=ssl,
            ssl_verify=ssl_verify,
            server_name=server_name,
            ca_file=ca_file,
            timeout_ms=max(int(timeout * 1000), 1),
            sentinel_master=sentinel_master,
            sentinels=sentinels,
            sentinel_username=sentinel_username,
            sentinel_password=sentinel_password,
            cluster_nodes=cluster_nodes,
        )
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--redis-url") from None
    ctx.obj = Env(settings, key_prefix, ledger_retention)


def _read_password(path: str) -> str:
    """The password in a file: its first line, without the line break (never echoed)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(
            f"cannot read {path}: {getattr(error, 'strerror', None) or type(error).__name__}",
            param_hint="--redis-password-file",
        ) from None
    password = text.splitlines()[0] if text.strip("\r\n") else ""
    if not password:
        raise click.BadParameter(f"{path} is empty", param_hint="--redis-password-file")
    return password


# Plans


def plan_json(plan: Plan) -> dict[str, Any]:
    return plan.to_document()


def plans_table(
    plans: Sequence[Plan], title: str | None = None, updated: dict[str, list[str]] | None = None
) -> Table:
    columns = ["plan", "period", "allowance", "prepaid", "title"]
    grid = table(*columns, *(["accounts updated"] if updated is not None else []), title=title)
    for plan in plans:
        cells = [
            plan.name,
            plan.period.value,
            str(plan.allowance),
            yes_no(plan.prepaid),
            plan.title,
        ]
        if updated is not None:
            cells.append(str(len(updated[plan.name])))
        grid.add_row(*cells)
    return grid


@cli.group()
def plans() -> None:
    """Apply, list, show and delete plans."""


@plans.command("apply")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@pass_admin
def plans_apply(admin: Admin, files: tuple[Path, ...], as_json: bool) -> None:
    """Create or replace the plans in YAML or JSON FILES (checked against the plan schema).

    Every plan of every file is checked before any is written: one error and nothing changes.
    Subscribed accounts get the new terms at once.
    """
    loaded = [plan for path in files for plan in load_plans(path)]
    names = [plan.name for plan in loaded]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise InvalidDocument(f"plan '{duplicate}' is defined in more than one file")
    updated = {plan.name: admin.apply_plan(plan) for plan in loaded}
    if as_json:
        emit_json([{**plan_json(p), "accounts_updated": len(updated[p.name])} for p in loaded])
        return
    show(plans_table(loaded, title=f"Applied {len(loaded)} plan(s)", updated=updated))


@plans.command("list")
@json_option
@pass_admin
def plans_list(admin: Admin, as_json: bool) -> None:
    """List every plan."""
    found = admin.plans()
    if as_json:
        emit_json([plan_json(p) for p in found])
    elif not found:
        click.echo("No plans yet: `credit-gate plans apply plans.yaml` creates them.")
    else:
        show(plans_table(found))


@plans.command("show")
@click.argument("name")
@json_option
@pass_admin
def plans_show(admin: Admin, name: str, as_json: bool) -> None:
    """Show a plan and how many accounts are subscribed to it."""
    plan = admin.plan(name)
    subscribers = admin.plan_subscribers(name)
    if as_json:
        emit_json({**plan_json(plan), "subscribed_accounts": len(subscribers)})
        return
    grid = table("field", "value")
    for field, value in plan_json(plan).items():
        grid.add_row(field, yes_no(value) if isinstance(value, bool) else str(value))
    grid.add_row("subscribed accounts", str(len(subscribers)))
    show(grid)


@plans.command("delete")
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Delete even while accounts are subscribed (they keep its terms)."
)
@json_option
@pass_admin
def plans_delete(admin: Admin, name: str, force: bool, as_json: bool) -> None:
    """Delete a plan; refused (exit 3) while accounts are subscribed to it, unless --force."""
    try:
        admin.delete_plan(name, force=force)
    except Conflict as error:
        message = str(error).replace("or force the deletion", "or pass --force to delete it anyway")
        raise Conflict(message) from None
    if as_json:
        emit_json({"deleted": name})
    else:
        click.echo(f"Deleted plan '{name}'.")


# Accounts and subscriptions


def subscription_json(view: AccountView) -> dict[str, Any]:
    return {"account": view.account, **(view.to_json()["subscription"] or {})}


def show_view(view: AccountView, *, with_balance: bool) -> None:
    grid = table("field", "value")
    grid.add_row("account", view.account)
    if with_balance:
        grid.add_row("balance", f"{view.balance} credits")
    if not view.subscribed:
        grid.add_row("subscription", "none (`credit-gate subscribe ACCOUNT PLAN`)")
        show(grid)
        return
    grid.add_row("plan", view.plan)
    grid.add_row("status", view.status)
    grid.add_row("starts at", when(view.starts_at))
    grid.add_row("period anchor", when(view.anchor))
    grid.add_row("expires at", when(view.expires_at, "never"))
    if with_balance:
        grid.add_row("period", view.period)
        grid.add_row("allowance", f"{view.allowance} credits per period")
        grid.add_row("allowance used", str(view.used))
        grid.add_row("allowance left", str(view.remaining))
        grid.add_row("period ends", when(view.period_end, "never"))
        grid.add_row("prepaid use", "yes" if view.prepaid else "no (refused when the allowance is used up)")
    show(grid)


@cli.command("accounts")
@json_option
@pass_admin
def accounts(admin: Admin, as_json: bool) -> None:
    """List every account with its plan, status and balance."""
    views = admin.accounts()
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    if not views:
        click.echo("No accounts yet: `credit-gate subscribe ACCOUNT PLAN` creates one.")
        return
    grid = table("account", "plan", "status", "balance", "allowance left", "period ends")
    for v in views:
        left = f"{v.remaining}/{v.allowance}" if v.subscribed else "-"
        grid.add_row(v.account, v.plan or "-", v.status or "-", str(v.balance), left, when(v.period_end, "-"))
    show(grid)


@cli.command("subscribe")
@click.argument("account")
@click.argument("plan")
@click.option("--status", type=STATUS, default=Status.ACTIVE.value, show_default=True)
@click.option("--start", callback=INSTANT, metavar="TIME", help="When the subscription starts (default now).")
@click.option(
    "--anchor", callback=INSTANT, metavar="TIME", help="When billing periods start (default: the start)."
)
@click.option(
    "--expires", callback=INSTANT, metavar="TIME", help="When the subscription ends (default never)."
)
@json_option
@pass_admin
def subscribe(
    admin: Admin,
    account: str,
    plan: str,
    status: str,
    start: int | None,
    anchor: int | None,
    expires: int | None,
    as_json: bool,
) -> None:
    """Subscribe ACCOUNT to PLAN (or re-subscribe it with new times); its balance is kept."""
    admin.subscribe(account, plan, status=Status(status), starts_at=start, anchor=anchor, expires_at=expires)
    view = admin.view(account)
    if as_json:
        emit_json(subscription_json(view))
    else:
        show_view(view, with_balance=False)


@cli.command("change-plan")
@click.argument("account")
@click.argument("plan")
@json_option
@pass_admin
def change_plan(admin: Admin, account: str, plan: str, as_json: bool) -> None:
    """Move ACCOUNT to PLAN, keeping its status, start, anchor, expiry and balance."""
    previous = admin.change_plan(account, plan)
    view = admin.view(account)
    if as_json:
        emit_json({**subscription_json(view), "previous_plan": previous})
    else:
        click.echo(f"Account '{account}' moved from plan '{previous}' to '{plan}'.")


@cli.command("set-status")
@click.argument("account")
@click.argument("status", type=STATUS, metavar="STATUS")
@json_option
@pass_admin
def set_status(admin: Admin, account: str, status: str, as_json: bool) -> None:
    """Set ACCOUNT's subscription STATUS: only active and trialing are charged, the others refused."""
    previous = admin.set_status(account, Status(status))
    if as_json:
        emit_json({"account": account, "status": status, "previous_status": previous})
    else:
        click.echo(f"Account '{account}': status {previous} -> {status}.")


@cli.command("subscription")
@click.argument("account")
@json_option
@pass_admin
def subscription(admin: Admin, account: str, as_json: bool) -> None:
    """Show ACCOUNT's subscription."""
    view = admin.view(account)
    if not view.subscribed:
        raise NotFound(f"account '{account}' has no subscription; `credit-gate subscribe {account} PLAN`")
    if as_json:
        emit_json(subscription_json(view))
    else:
        show_view(view, with_balance=False)


# Pools

CAP = _parsed(lambda text, where: parse_credits(text, where, minimum=0), exact=True)


@cli.command("pool-cap")
@click.argument("pool")
@click.argument("member")
@click.argument("cap", required=False, callback=CAP)
@click.option("--remove", is_flag=True, help="Lift the member's cap.")
@json_option
@pass_admin
def pool_cap(admin: Admin, pool: str, member: str, cap: int | None, remove: bool, as_json: bool) -> None:
    """Cap what MEMBER may draw from POOL per period of the pool's plan (CAP credits), or --remove it.

    Membership comes from Kong: a consumer tagged <pool_tag_prefix><POOL> draws from POOL.
    """
    if (cap is None) == (not remove):
        raise InvalidDocument("give a CAP, or --remove to lift the cap", "cap")
    admin.set_member_cap(pool, member, None if remove else cap)
    if as_json:
        emit_json({"pool": pool, "member": member, "cap": None if remove else cap})
    elif remove:
        click.echo(f"Pool '{pool}': member '{member}' has no cap.")
    else:
        click.echo(f"Pool '{pool}': member '{member}' may draw {credits(cap or 0)} per period.")


@cli.command("pool-caps")
@click.argument("pool")
@json_option
@pass_admin
def pool_caps(admin: Admin, pool: str, as_json: bool) -> None:
    """List the caps of POOL's members."""
    caps = admin.member_caps(pool)
    if as_json:
        emit_json([{"member": m, "cap": c} for m, c in sorted(caps.items())])
        return
    if not caps:
        click.echo(f"Pool '{pool}' caps no member.")
        return
    grid = table("member", "cap per period")
    for member, cap in sorted(caps.items()):
        grid.add_row(member, str(cap))
    show(grid)


# Credits


def credit_json(account: str, result: Any, amount: int) -> dict[str, Any]:
    return {
        "account": account,
        "amount": amount,
        "applied": result.applied,
        "balance": result.balance,
        "ledger_id": result.ledger_id,
    }


def _unknown_outcome(error: StoreError, account: str, key: str) -> StoreError:
    hint = (
        f"retrying with the same --key {key} is safe"
        if key
        else f"check `credit-gate ledger {account}` before retrying, and pass --key next time"
    )
    return StoreError(f"{error} (the change may or may not have been made: {hint})")


@cli.command("grant")
@click.argument("account")
@click.argument("amount", callback=CREDITS)
@click.option("--note", default="", help="Why, kept in the ledger (an invoice number, a reason).")
@click.option(
    "--key", default="", help="Idempotency key: the same key counts once, however often it is sent."
)
@click.option("--create", is_flag=True, help="Hold credit for an account that does not exist yet.")
@json_option
@pass_admin
def grant(admin: Admin, account: str, amount: int, note: str, key: str, create: bool, as_json: bool) -> None:
    """Top up ACCOUNT with AMOUNT credits."""
    try:
        result = admin.grant(account, amount, note=note, idempotency_key=key, create=create)
    except NotFound:
        raise NotFound(
            f"no account named '{account}'; subscribe it first (`credit-gate subscribe {account} PLAN`), "
            "or pass --create to hold credit for it"
        ) from None
    except StoreError as error:
        raise _unknown_outcome(error, account, key) from error
    if as_json:
        emit_json(credit_json(account, result, amount))
    elif result.applied:
        click.echo(
            f"Granted {credits(amount)} to '{account}': balance {result.balance} (ledger {result.ledger_id})."
        )
    else:
        click.echo(
            f"Key '{key}' was already applied (ledger {result.ledger_id}); nothing granted. "
            f"Balance {result.balance}."
        )


@cli.command("adjust-down")
@click.argument("account")
@click.argument("amount", callback=CREDITS)
@click.option("--note", default="", help="Why, kept in the ledger.")
@click.option("--key", default="", help="Idempotency key: the same key counts once.")
@json_option
@pass_admin
def adjust_down(admin: Admin, account: str, amount: int, note: str, key: str, as_json: bool) -> None:
    """Take AMOUNT credits from ACCOUNT; refused (exit 3) if the balance would go below zero."""
    try:
        result = admin.adjust_down(account, amount, note=note, idempotency_key=key)
    except StoreError as error:
        raise _unknown_outcome(error, account, key) from error
    if as_json:
        emit_json(credit_json(account, result, -amount))
    elif result.applied:
        click.echo(
            f"Took {credits(amount)} from '{account}': balance {result.balance} (ledger {result.ledger_id})."
        )
    else:
        click.echo(
            f"Key '{key}' was already applied (ledger {result.ledger_id}); nothing taken. "
            f"Balance {result.balance}."
        )


@cli.command("balance")
@click.argument("account")
@json_option
@pass_admin
def balance(admin: Admin, account: str, as_json: bool) -> None:
    """Show ACCOUNT's balance, its period allowance (used, left, end) and its subscription."""
    view = admin.view(account)
    if as_json:
        emit_json(view.to_json())
    else:
        show_view(view, with_balance=True)


# The ledger


def entry_detail(entry: LedgerEntry) -> str:
    fields = entry.fields
    parts = []
    if fields.get("kind") == "charge":
        parts.append(f"cost {fields.get('cost', '0')} ({fields.get('from_allowance', '0')} from allowance)")
        parts.append(fields.get("route", ""))
    if fields.get("kind") == "period_reset":
        parts.append(
            f"{fields.get('allowance_used', '0')} of {fields.get('allowance', '0')} used in the last period"
        )
    for name in ("note", "key", "reference"):
        if fields.get(name):
            parts.append(f"{name}: {fields[name]}")
    return "; ".join(p for p in parts if p)


@cli.command("ledger")
@click.argument("account")
@click.option("--since", callback=INSTANT, metavar="TIME", help="Entries recorded at or after this time.")
@click.option("--until", callback=INSTANT, metavar="TIME", help="Entries recorded before this time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True, help="The newest N.")
@json_option
@pass_admin
def ledger(
    admin: Admin, account: str, since: int | None, until: int | None, limit: int, as_json: bool
) -> None:
    """Show ACCOUNT's newest ledger entries, oldest first."""
    entries = admin.ledger(account, since=since, until=until, limit=limit)
    if as_json:
        emit_json([export.record(e) for e in entries])
        return
    if not entries:
        click.echo(f"No ledger entries for '{account}' in that range.")
        return
    grid = table("ledger id", "time", "kind", "amount", "balance", "detail")
    for e in entries:
        grid.add_row(
            e.id,
            when(int(e.fields.get("at") or 0)),
            e.fields.get("kind", ""),
            e.fields.get("amount", ""),
            e.fields.get("balance", ""),
            entry_detail(e),
        )
    show(grid)


@cli.command("verify")
@click.argument("accounts", nargs=-1)
@json_option
@pass_admin
def verify(admin: Admin, accounts: tuple[str, ...], as_json: bool) -> None:
    """Check that replaying each ledger gives the balance (every account if none is named); exit 5 if not."""
    names = list(accounts) or [v.account for v in admin.accounts()]
    if not admin.store.store_marked():  # an emptied Redis is no success, even with nothing to replay
        _say_error("Redis holds no credit-gate data (no store marker): it was emptied or is not the database")
        click.get_current_context().exit(EXIT_PROBLEMS)
    checks = [admin.verify_ledger(name) for name in names]
    bad = [c for c in checks if not c.ok]
    if as_json:
        emit_json(
            [
                {
                    "account": c.account,
                    "balance": c.balance,
                    "replayed": c.replayed,
                    "entries": c.entries,
                    "ok": c.ok,
                }
                for c in checks
            ]
        )
    else:
        grid = table("account", "balance", "replayed", "entries", "ok")
        for c in checks:
            grid.add_row(c.account, str(c.balance), str(c.replayed), str(c.entries), "yes" if c.ok else "NO")
        show(grid)
    if bad:
        if not as_json:
            _say_error(f"{len(bad)} ledger(s) do not replay to the balance (e.g. '{bad[0].account}')")
        click.get_current_context().exit(EXIT_PROBLEMS)


# Usage and export


def _default_since(now: int) -> int:
    return now - now % DAY_SECONDS - 6 * DAY_SECONDS


@cli.command("usage")
@click.option("--account", "accounts", multiple=True, help="Only this account (repeatable).")
@click.option(
    "--since",
    callback=INSTANT,
    metavar="TIME",
    help="From this day or time (default: 6 days ago, 00:00 UTC).",
)
@click.option("--until", callback=INSTANT, metavar="TIME", help="Before this day or time (default: now).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
@json_option
@pass_admin
def usage(
    admin: Admin, accounts: tuple[str, ...], since: int | None, until: int | None, fmt: str, as_json: bool
) -> None:
    """Requests, credits and refusals per account, route and UTC day, with a chart of credits per day."""
    conflicting_formats(click.get_current_context(), fmt, as_json, "json")
    now = admin.now()
    until = now + 1 if until is None else until
    since = _default_since(now) if since is None else since
    rows = admin.usage(since=since, until=until, accounts=list(accounts) or None)
    if as_json or fmt == "json":
        emit_json([r.to_json() for r in rows])
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        columns = ["day", "account", "route", "member", "requests", "credits", "refunded", "refused"]
        columns += ["replayed", "shadow_allowed", "shadow_refused"]
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r.to_json()[c] if c != "member" else r.member for c in columns])
        return
    out = console()
    if not rows:
        out.print(f"No usage from {when(since)} to {when(until)}.")
        return
    grid = table("day", "account", "route", "member", "requests", "credits", "refunded", "refused")
    for r in rows:
        grid.add_row(
            r.day,
            r.account,
            r.route,
            r.member,
            str(r.requests),
            str(r.credits),
            str(r.refunded),
            str(r.refused),
        )
    show(grid, out)
    if any(r.shadow_allowed or r.shadow_refused for r in rows):
        shadow = table("day", "account", "route", "would charge", "would refuse", title="Shadow mode")
        for r in rows:
            if r.shadow_allowed or r.shadow_refused:
                shadow.add_row(r.day, r.account, r.route, str(r.shadow_allowed), str(r.shadow_refused))
        out.print()
        show(shadow, out)
    per_day: dict[str, int] = {}
    for r in rows:
        if not r.member:  # a member's row repeats part of its pool's
            per_day[r.day] = per_day.get(r.day, 0) + r.net_credits
    top = max(per_day.values()) or 1
    chart = table("day", "credits", "", title="Credits per day")
    for day, spent in sorted(per_day.items()):
        chart.add_row(day, str(spent), Bar(size=top, begin=0, end=spent, width=40))
    out.print()
    out.print(chart)


class Counted:
    """The entries an export has taken so far (the last one may not have been written)."""

    def __init__(self, entries: Any) -> None:
        self._entries = iter(entries)
        self.count = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> LedgerEntry:
        entry: LedgerEntry = next(self._entries)
        self.count += 1
        return entry


@cli.command("export")
@click.option("--since", callback=INSTANT, metavar="TIME", help="Entries recorded at or after this time.")
@click.option(
    "--until",
    callback=INSTANT,
    metavar="TIME",
    help="Entries recorded before this time (use it as the next --since).",
)
@click.option("--account", "accounts", multiple=True, help="Only this account (repeatable).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in export.Format]),
    default=export.Format.JSONL.value,
    show_default=True,
)
@click.option("--source", help="CloudEvents source (default urn:credit-gate:<key prefix>).")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout."
)
@json_option
@pass_admin
def export_ledger(
    admin: Admin,
    since: int | None,
    until: int | None,
    accounts: tuple[str, ...],
    fmt: str,
    source: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Export ledger entries for billing, as JSON Lines, CSV or CloudEvents.

    Each entry's id (<account>/<ledger id>) is stable: export overlapping ranges and de-duplicate by id.
    --json is --format jsonl.
    """
    ctx = click.get_current_context()
    conflicting_formats(ctx, fmt, as_json, export.Format.JSONL.value)
    chosen = export.Format.JSONL if as_json else export.Format(fmt)
    env = ctx.find_object(Env)
    assert env is not None
    entries = Counted(admin.ledger_entries(since=since, until=until, accounts=list(accounts) or None))
    src = source or export.default_source(env.prefix)
    if output is None:
        try:
            count = export.write(entries, chosen, sys.stdout, source=src)
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            click.echo(
                f"credit-gate: export stopped: the reader closed the output after at most "
                f"{entries.count} of the ledger entries (use --output FILE for the whole export)",
                err=True,
            )
            ctx.exit(EXIT_PIPE_CLOSED)
    else:
        # Written to a temporary name and renamed: a failed export never leaves half a file behind.
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8", newline="") as handle:
                count = export.write(entries, chosen, handle, source=src)
            partial.replace(output)
        except OSError as error:
            raise InvalidDocument(f"cannot write the file: {error.strerror or error}", str(output)) from None
        finally:
            partial.unlink(missing_ok=True)
    click.echo(f"credit-gate: exported {count} ledger {'entry' if count == 1 else 'entries'}", err=True)


# Bulk import


@cli.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write rejected rows here, to fix and re-import.",
)
@json_option
@pass_admin
def import_accounts(admin: Admin, file: Path, rejects: Path | None, as_json: bool) -> None:
    """Import accounts, subscriptions and opening balances from a CSV FILE.

    Columns: account (required), plan, status, starts_at, anchor, expires_at, balance, key, note.
    Each row is applied wholly or not at all, and importing the same file again changes nothing.
    Exit 5 when some rows were rejected.
    """
    total = importer.count_rows(file) if file.exists() else 0
    err = Console(stderr=True)
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as progress:
        task = progress.add_task("import", total=total)
        report = importer.import_csv(admin, file, advance=lambda: progress.advance(task))
    if rejects is not None:
        with rejects.open("w", encoding="utf-8", newline="") as handle:
            importer.write_rejects(report, handle)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(
            f"Imported {report.applied} of {report.rows} rows: {report.granted_credits} credits granted, "
            f"{report.grants_already_applied} opening balance(s) already imported, "
            f"{len(report.rejected)} rejected."
        )
        if report.rejected:
            grid = table("line", "account", "error", title="Rejected rows")
            for r in report.rejected:
                grid.add_row(str(r.line), r.account, r.error)
            show(grid)
    if report.rejected:
        click.get_current_context().exit(EXIT_PROBLEMS)


# Deployment


@cli.command("kong-conf")
@click.option("--prefix", default="/usr/local/kong", show_default=True, help="Kong's prefix directory.")
@click.option("--env", "as_env", is_flag=True, help="Print KONG_* environment variables instead.")
@click.option(
    "--log-phase", is_flag=True, help="Run the server with Kong's log phase (refunds, hold-then-settle)."
)
@json_option
def kong_conf(prefix: str, as_env: bool, log_phase: bool, as_json: bool) -> None:
    """Print what kong.conf needs to run credit-gate's plugin server on a native Kong install."""
    if not prefix.startswith("/"):
        # Kong starts the server from its own working directory: a relative socket path would name
        # another place for each side.
        raise click.BadParameter(
            f"must be an absolute path (Kong's prefix, e.g. /usr/local/kong), got {prefix!r}",
            param_hint="--prefix",
        )
    if as_json:
        pairs = deploy.settings(prefix, log_phase)
        emit_json({f"KONG_{k.upper()}" if as_env else k: v for k, v in pairs})
    else:
        click.echo(deploy.kong_conf(prefix, env=as_env, log_phase=log_phase), nl=False)


# The HTTP service


@cli.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="CREDIT_GATE_HOST", help="Address to listen on."
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8080, show_default=True, envvar="CREDIT_GATE_PORT"
)
@click.option(
    "--admin-token-file",
    "admin_token_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of read-write tokens, one a line (also env CREDIT_GATE_ADMIN_TOKENS).",
)
@click.option(
    "--read-token-file",
    "read_token_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of read-only tokens, one a line (also env CREDIT_GATE_READ_TOKENS).",
)
@click.option(
    "--billing-map",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CREDIT_GATE_BILLING_MAP",
    help="YAML/JSON: Stripe price/product ids to credits, customers to accounts (docs/service.md).",
)
@click.option("--print-openapi", is_flag=True, help="Print the OpenAPI document and exit.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    admin_token_files: tuple[Path, ...],
    read_token_files: tuple[Path, ...],
    billing_map: Path | None,
    print_openapi: bool,
) -> None:
    """Run the HTTP API (OpenAPI at /openapi.json). Refuses to start without a token unless on loopback."""
    from creditgate.service import server

    env = ctx.find_object(Env)
    assert env is not None
    app, warning = server.build(
        env.settings,
        host=host,
        prefix=env.prefix,
        ledger_retention=env.retention,
        admin_token_files=admin_token_files,
        read_token_files=read_token_files,
        billing_map=billing_map,
    )
    if print_openapi:
        emit_json(app.openapi())
        return
    if warning:
        _say_error(f"warning: {warning}")
    server.run(app, host, port)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``credit-gate`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="credit-gate")
    raise SystemExit(EXIT_OK)  # not reached: main exits


__all__ = [
    "EXIT_CONFLICT",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_PROBLEMS",
    "EXIT_STORE",
    "cli",
    "main",
]
