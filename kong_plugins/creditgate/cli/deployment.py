"""Running credit-gate: the kong.conf lines, and the HTTP service."""

from __future__ import annotations

from pathlib import Path

import click

from creditgate.cli.common import Env, json_option, say_warning
from creditgate.cli.output import emit_json
from creditgate.ops import kong_conf as deploy


@click.command("kong-conf")
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


@click.command("serve")
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
@click.option(
    "--docs",
    is_flag=True,
    envvar="CREDIT_GATE_DOCS",
    help="Serve the API's reference (Swagger UI, shipped in the package) at /docs/. Off by default.",
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
    docs: bool,
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
        docs=docs,
    )
    if print_openapi:
        emit_json(app.openapi())
        return
    if warning:
        say_warning(warning)
    server.run(app, host, port)


COMMANDS = [kong_conf, serve]
