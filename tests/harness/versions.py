"""What differs between the Kong releases the suite plays, for an external plugin, each rule with its source.

Only the differences that reach a plugin server are modelled; everything else is Kong 3.9's behaviour.
The files are in the Kong/kong repository; the plugin-server code moved from
``kong/runloop/plugin_servers/init.lua`` + ``mp_rpc.lua`` (3.4 to 3.6) to ``plugin.lua`` +
``rpc/mp_rpc.lua`` (3.7 and later).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class KongRules:
    """The rules one Kong release follows when it talks to a plugin server."""

    version: str
    reset_scope: Literal["plugin id", "worker"]
    """What the worker that met "no plugin instance" forgets before it retries: the failing plugin id
    (3.4, ``reset_instance``: ``running_instances[key] = nil``) or every instance of the plugin in that
    worker (3.5+, ``reset_instances_for_plugin``)."""
    posts_reset_event: bool
    """3.5+ also post the ``plugin_server``/``reset_instances`` worker event, which the other workers
    apply when it reaches them (``kong.worker_events``: later, not at once)."""
    reset_event_receivers: Literal["none", "worker 0", "every worker"]
    """Who registered the event's handler: 3.5-3.6 register it in ``plugin_servers.start()`` after its
    ``if worker_id() ~= 0 then return end``, so only worker 0 applies another worker's reset; 3.7+
    register it in every worker (``kong/runloop/plugin_servers/init.lua``, ``start``)."""
    sends_seq: bool
    """``__seq__`` in the config JSON, unique across the workers (3.6+,
    ``kong/runloop/plugins_iterator.lua``); the harness still changes an instance when a 3.4 config
    changes (a new plugin iterator)."""
    claim_failure: Literal["sent without an instance id", "logged, proxied without the plugin"]
    """What ``handle_event`` does when ``get_instance_id`` returns an error (another request held the
    claim for ``WAIT_TIME``): 3.4 ignores it (``local instance_id = self.get_instance_id(...)``) and sends
    ``HandleEvent`` with a nil ``InstanceId``; 3.6+ check it (``if not err then bridge_loop ...``), log it
    and run the request without the plugin (``mp_rpc.lua`` / ``rpc/mp_rpc.lua``, ``Rpc:handle_event``)."""
    sources: tuple[str, ...]


RULES: dict[str, KongRules] = {
    "3.4": KongRules(
        version="3.4",
        reset_scope="plugin id",
        posts_reset_event=False,
        reset_event_receivers="none",
        sends_seq=False,
        claim_failure="sent without an instance id",
        sources=("kong/runloop/plugin_servers/init.lua", "kong/runloop/plugin_servers/mp_rpc.lua"),
    ),
    "3.6": KongRules(
        version="3.6",
        reset_scope="worker",
        posts_reset_event=True,
        reset_event_receivers="worker 0",
        sends_seq=True,
        claim_failure="logged, proxied without the plugin",
        sources=("kong/runloop/plugin_servers/init.lua", "kong/runloop/plugin_servers/mp_rpc.lua"),
    ),
    "3.9": KongRules(
        version="3.9",
        reset_scope="worker",
        posts_reset_event=True,
        reset_event_receivers="every worker",
        sends_seq=True,
        claim_failure="logged, proxied without the plugin",
        sources=(
            "kong/runloop/plugin_servers/init.lua",
            "kong/runloop/plugin_servers/plugin.lua",
            "kong/runloop/plugin_servers/rpc/mp_rpc.lua",
        ),
    ),
}

KONG_VERSIONS = tuple(RULES)

RESET_SCOPE = {version: rules.reset_scope for version, rules in RULES.items()}
"""The reset scope of each release (kept for the tests written before :class:`KongRules`)."""


def rules_for(version: str) -> KongRules:
    """The rules of ``version``; a version the harness does not play is a ``ValueError``."""
    try:
        return RULES[version]
    except KeyError:
        raise ValueError(f"kong_version must be one of {sorted(RULES)}, got {version!r}") from None
