"""credit-gate: the Kong plugin. Kong's contract lives here; the work is in the ``creditgate`` package.

Run by Kong as a dedicated plugin server (``credit-gate-pluginserver``), one per plugin, as Kong 3.9
registers only the first plugin a server reports.
"""

from __future__ import annotations

import sys
from typing import Any

from creditgate.core.schema import FIELDS
from creditgate.kong import runtime

version = "0.1.0"

# Kong runs plugins from the highest priority down. 1 puts the gate after every bundled plugin that
# may still refuse a request in the access phase (authentication 1000-1450, acl 950, rate-limiting
# 910, response-ratelimiting 900, proxy-cache 100 (a cache hit is not charged), ai-prompt-guard 15,
# request-termination 2), so that a request another plugin refuses is never charged.
priority = 1

# Every setting with its type, default, bounds and description, declared once (core/schema.py): the
# config parser, the CLI and the generated JSON Schema read them from there.
Schema = FIELDS


class Plugin:
    """Kong's entry point: kong-pdk builds one per plugin instance and calls its phases.

    kong-pdk finds the phases by looking for methods, and every phase is one more round trip per
    request, so this class has only ``access``; ``SettlingPlugin`` adds ``log``.
    """

    log_phase = False

    def __init__(self, config: dict[str, Any]) -> None:
        from creditgate.kong.gate import Gate  # imported late: see main()

        self.gate = Gate(config, log_phase=self.log_phase)
        # kong-pdk calls the phase it finds on the instance: the gate's own, one call fewer per request.
        self.access = self.gate.access  # type: ignore[method-assign]

    def access(self, kong: Any) -> bool:
        """Declares the phase to kong-pdk (it lists the class's methods); each instance uses its gate's."""
        return self.gate.access(kong)  # True: the request was ended with kong.response.exit


class SettlingPlugin(Plugin):
    """The plugin with Kong's log phase, for refunds on failure and hold-then-settle (``--log-phase``)."""

    log_phase = True

    def log(self, kong: Any) -> None:
        self.gate.log(kong)


LOG_PHASE_FLAG = "--log-phase"
HELP_EPILOG = f"""
credit-gate:
  {LOG_PHASE_FLAG:<20}  also run in Kong's log phase, for refund_on_failure and settle_header;
                        give it to the query command too (Kong reads the phases from --dump)
  --processes N         server processes behind the socket (default one per core; 1 is a single
                        process): each nginx worker's connections stay with one of them
  --runtime NAME        credit-gate (default: Kong's protocol on one event loop, about a third of
                        kong-pdk's cost per request) or kong-pdk (kong-pdk's own server, with -g
                        for gevent or threads without it)

Kong starts this command with an empty environment (no PATH): give kong.conf its absolute path, or
link it into /usr/local/bin. `credit-gate kong-conf` prints the kong.conf lines.
"""


def print_help() -> None:
    """kong-pdk's own --help (its parser knows only its flags), then this server's flag."""
    import contextlib
    import io

    from kong_pdk.cli import parse

    text = io.StringIO()
    argv, sys.argv = sys.argv, [sys.argv[0], "--help"]
    try:
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            parse(dedicated=True)
    finally:
        sys.argv = argv
    from creditgate.kong.processes import PLUGIN_NAME

    # kong-pdk's parser names its own default socket; this server's is the plugin's (processes.py).
    kong_pdk_help = text.getvalue().replace("python_pluginserver.sock", f"{PLUGIN_NAME}.sock")
    sys.stdout.write(kong_pdk_help + HELP_EPILOG)


def main() -> None:
    """``credit-gate-pluginserver``: kong-pdk's dedicated server for this plugin.

    Takes kong-pdk's flags (``--dump``, ``--kong-prefix``, ``--socket-name``, ``-g``, ``-m``, ``-v``),
    ``--processes N`` (server processes behind the socket; default one per core, 1 is a single
    process: see ``creditgate.kong.processes``) and ``--log-phase`` for the features that act after
    the response (give it to the query command too: Kong learns the plugin's phases from the dump).
    PDK calls return values and raise on error (``--no-lua-style``), which the gate relies on.
    With ``-g`` the standard library is patched for gevent first, before redis-py is imported: this
    module imports nothing heavy at its top for that reason.
    """
    if {"-h", "--help"} & set(sys.argv[1:]):
        print_help()
        return
    from creditgate.kong import processes

    try:
        flags = processes.split_flags(sys.argv[1:])
    except ValueError as error:
        print(f"credit-gate-pluginserver: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    unknown = processes.unknown_flags(flags.rest)
    if unknown:
        print(
            f"credit-gate-pluginserver: unknown argument(s): {' '.join(unknown)} "
            "(`credit-gate-pluginserver --help` lists the flags)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    sys.argv[1:] = flags.rest
    if runtime.wants_processes(sys.argv[1:]):
        # kong-pdk's process mode pickles the plugin instance for each event; an instance holds a Redis
        # connection pool, which cannot be pickled, and the event then never answers: every request
        # would hang, and Kong would proxy it unpaid. Refuse to start instead.
        print(
            "credit-gate-pluginserver: kong-pdk's process mode (-m) cannot run this plugin; "
            "use -g (gevent, recommended) or no flag (threads)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    one_shot = bool(processes.ONE_SHOT_FLAGS & set(flags.rest))
    if flags.processes > 1 and flags.channel_fd is None and not one_shot:
        # An acceptor in front of `--processes` server processes (processes.py): nothing heavy
        # is imported in this process, each server process runs this main() with --processes 1.
        raise SystemExit(processes.run_acceptor(flags.processes, flags.rest, flags.runtime))
    listener = None
    if flags.channel_fd is None and not one_shot:
        # A single server process listens first: Kong's calls then wait for it to start instead of
        # failing to connect meanwhile (processes.listen_early).
        listener = processes.listen_early(flags.rest)
    if "--no-lua-style" not in sys.argv:
        sys.argv.append("--no-lua-style")
    plugin: type[Plugin] = Plugin
    if LOG_PHASE_FLAG in sys.argv:
        sys.argv.remove(LOG_PHASE_FLAG)
        plugin = SettlingPlugin
    if flags.runtime == processes.RUNTIMES[0] and not one_shot:
        runtime.patch_for_gevent()
        serve_on_own_runtime(plugin, listener, flags.channel_fd)
        return
    if runtime.wants_gevent(sys.argv[1:]):
        runtime.patch_for_gevent()
    from kong_pdk.cli import start_dedicated_server

    runtime.install_exit_fix()
    runtime.install_small_read_buffers()
    runtime.install_unique_ids()
    runtime.install_lean_dispatch()
    if flags.channel_fd is not None:
        runtime.serve_from_channel(flags.channel_fd)
    elif listener is not None:
        runtime.serve_from_listener(listener)
    start_dedicated_server("credit-gate", plugin, version, priority, Schema)


def serve_on_own_runtime(plugin: type[Plugin], listener: Any, channel_fd: int | None) -> None:
    """credit-gate's runtime (``creditgate.kong.plugin_server``), after kong-pdk's own flag checks."""
    from kong_pdk.cli import parse

    from creditgate.kong import plugin_server, processes

    try:
        args = parse(dedicated=True)  # kong-pdk's flags, its usage errors (status 2) and their text
    except OSError as error:  # the Kong prefix does not exist
        print(f"credit-gate-pluginserver: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if channel_fd is not None:
        processes.die_with_the_acceptor()
    elif listener is None:
        path = processes.socket_path(sys.argv[1:])
        try:
            listener = processes.bind_listener(path, args.listen_queue_size)
        except OSError as error:
            print(f"credit-gate-pluginserver: cannot listen on {path}: {error}", file=sys.stderr)
            raise SystemExit(1) from None
    plugin_server.serve(
        "credit-gate",
        plugin,
        version,
        priority,
        Schema,
        listener=listener,
        channel_fd=channel_fd,
        lua_style=not args.no_lua_style,
    )


if __name__ == "__main__":
    main()
