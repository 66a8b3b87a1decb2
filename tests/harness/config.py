"""Plugin entities as Kong's plugins iterator hands them to a worker, and Kong's schema processing."""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_seq_counter = itertools.count(1)
_seq_lock = threading.Lock()


def _next_seq() -> int:
    with _seq_lock:
        return next(_seq_counter)


@dataclass(frozen=True)
class PluginConfig:
    """One plugin entity as Kong's plugins iterator sees it.

    ``seq`` plays Kong's ``__seq__``: it changes whenever Kong rebuilds the iterator (any config change),
    which makes Kong start a new instance and close the old one. Use :meth:`changed`.
    """

    config: Mapping[str, Any] = field(default_factory=dict)
    plugin_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = field(default_factory=_next_seq)
    route_id: str | None = None
    service_id: str | None = None
    consumer_id: str | None = None
    instance_name: str | None = None

    def changed(self, **updates: Any) -> PluginConfig:
        """The same plugin entity after an Admin API / declarative update: new ``__seq__``."""
        return PluginConfig(
            config={**self.config, **updates},
            plugin_id=self.plugin_id,
            seq=_next_seq(),
            route_id=self.route_id,
            service_id=self.service_id,
            consumer_id=self.consumer_id,
            instance_name=self.instance_name,
        )

    @property
    def is_global(self) -> bool:
        return self.route_id is None and self.service_id is None and self.consumer_id is None


def fill_schema(
    fields: Sequence[Mapping[str, Any]], given: Mapping[str, Any], path: str = "config"
) -> dict[str, Any]:
    """Kong's schema processing of a config record: every field present, defaults filled, unset as null.

    Unknown and missing required fields raise ``ValueError`` (Kong would reject the config).
    """
    specs: dict[str, Mapping[str, Any]] = {}
    for entry in fields:
        ((name, spec),) = entry.items()
        specs[name] = spec
    unknown = set(given) - set(specs)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        nested = spec.get("fields") if spec.get("type") == "record" else None
        if name in given:
            value = given[name]
            if nested is not None and isinstance(value, Mapping):
                value = fill_schema(nested, value, f"{path}.{name}")
            out[name] = copy.deepcopy(value)
        elif spec.get("default") is not None:
            out[name] = copy.deepcopy(spec["default"])
        elif spec.get("required"):
            raise ValueError(f"{path}.{name}: required field missing")
        elif nested is not None:
            out[name] = fill_schema(nested, {}, f"{path}.{name}")  # Kong expands a missing record
        else:
            out[name] = None
    return out
