"""The ``credit-gate`` command group: the connection options, and one line on stderr for every failure."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from creditgate.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_STORE,
    Env,
    Failure,
    exit_code,
    say_error,
    silence_stdout,
)
from creditgate.core.redis_settings import LOCALHOST, REDIS_PORT
from creditgate.core.schema import between, default
from creditgate.errors import ConfigError, CreditGateError, StoreError
from creditgate.ops.redis_url import settings_from_url


class App(click.Group):
    """The command group: turns every failure into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`| head`): not an error of the input. Later writes (and Python's
            # flush at exit) go nowhere instead of failing again.
            silence_stdout()
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
            message = f"{error}; {error.cli_hint}" if error.cli_hint else str(error)
            raise Failure(message, exit_code(error)) from error
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
            say_error(error.format_message())
            code = error.code
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "credit-gate"
            say_error(f"{_usage_message(error)} (see `{command} --help`)")
            code = EXIT_INVALID
        except click.ClickException as error:
            say_error(error.format_message())
            code = EXIT_INVALID
        except click.Abort:
            say_error("interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_message(error: click.UsageError) -> str:
    """click's message, but for a negative number, which click takes for an unknown option (`grant acme
    -5`): say what amounts are, and how credits are taken away."""
    name = getattr(error, "option_name", "") if isinstance(error, click.NoSuchOption) else ""
    if name and name[1:].isdigit():
        return (
            f"{name}: amounts are whole numbers of credits and never negative; to take credits from an "
            "account, `credit-gate adjust-down ACCOUNT AMOUNT`"
        )
    return error.format_message()


_CREDENTIAL_ERRORS = ("noauth", "wrongpass", "authenticat", "invalid username-password", "noperm")


def _is_credentials_error(detail: str) -> bool:
    lowered = detail.lower()
    return any(marker in lowered for marker in _CREDENTIAL_ERRORS)


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--redis-url",
    envvar="CREDIT_GATE_REDIS_URL",
    default=f"redis://{LOCALHOST}:{REDIS_PORT}/0",
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
