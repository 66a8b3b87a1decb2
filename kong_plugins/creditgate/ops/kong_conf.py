"""What a native Kong install needs to run credit-gate's plugin server: kong.conf lines or KONG_* variables.

Kong starts one dedicated server per external plugin (``pluginserver_names``) and finds it by the
socket under its prefix; the names of the settings are Kong's (``kong/templates/kong_defaults.lua``),
with the server's name lower-cased and ``-`` written ``_``.
"""

from __future__ import annotations

PLUGIN_NAME = "credit-gate"
SERVER_COMMAND = "credit-gate-pluginserver"
SOCKET_NAME = f"{PLUGIN_NAME}.sock"
# credit-gate's own runtime (the default) always runs on gevent's loop and takes the flag as it is; with
# `--runtime kong-pdk` it is kong-pdk's gevent mode, about half the CPU per request of its threads mode.
CONCURRENCY_FLAG = "-g"
LOG_PHASE_FLAG = "--log-phase"


def start_command(prefix: str, log_phase: bool = False) -> str:
    """The command Kong runs to start the plugin server: the one place its flags are put together."""
    extra = f" {LOG_PHASE_FLAG}" if log_phase else ""
    return f"{SERVER_COMMAND} {CONCURRENCY_FLAG} --kong-prefix {prefix} --socket-name {SOCKET_NAME}{extra}"


def query_command(log_phase: bool = False) -> str:
    """Kong reads the plugin's phases from this dump: it must say --log-phase when the server does."""
    return f"{SERVER_COMMAND} --dump" + (f" {LOG_PHASE_FLAG}" if log_phase else "")


def settings(prefix: str = "/usr/local/kong", log_phase: bool = False) -> list[tuple[str, str]]:
    """The kong.conf settings, in the order an operator would write them."""
    prefix = prefix.rstrip("/") or "/"
    server = PLUGIN_NAME.replace("-", "_")
    socket = f"{prefix}/{SOCKET_NAME}" if prefix != "/" else f"/{SOCKET_NAME}"
    return [
        ("plugins", f"bundled,{PLUGIN_NAME}"),
        ("pluginserver_names", PLUGIN_NAME),
        (f"pluginserver_{server}_socket", socket),
        (f"pluginserver_{server}_start_cmd", start_command(prefix, log_phase)),
        (f"pluginserver_{server}_query_cmd", query_command(log_phase)),
    ]


def kong_conf(prefix: str = "/usr/local/kong", env: bool = False, log_phase: bool = False) -> str:
    """kong.conf lines (``name = value``), or with ``env`` ``KONG_NAME=value`` lines for a shell or a unit.

    ``log_phase``: for refunds on failure and hold-then-settle, which act in Kong's log phase.
    """
    lines = []
    for name, value in settings(prefix, log_phase):
        if env:
            lines.append(f"KONG_{name.upper()}={_shell_quote(value)}")
        else:
            lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def _shell_quote(value: str) -> str:
    """Single-quote a value that a shell would otherwise split, so the lines can be sourced as they are."""
    if value and all(ch.isalnum() or ch in "-_./,:=@" for ch in value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"
