"""The plugin server's shared Redis stores are given back by finalizers, which the garbage collector
runs wherever it interrupts the program: a finalizer that waited for the registry's lock while its own
thread held it would hang the plugin server for ever (the suite once hung that way)."""

from __future__ import annotations

import gc
import threading

from creditgate.core.config import GateConfig, RedisSettings, parse_config
from creditgate.kong.stores import StoreRegistry


class Instance:
    """Stands for a plugin instance: the owner of a claim on a store."""


def config_for(settings: RedisSettings, read_timeout: int = 1000) -> GateConfig:
    redis = {"host": settings.host, "port": settings.port, "read_timeout": read_timeout}
    return parse_config({"redis": redis})


def test_an_instance_collected_while_the_registry_is_locked_neither_hangs_nor_leaks(
    settings: RedisSettings,
) -> None:
    registry = StoreRegistry()
    instances = [Instance()]
    registry.get(config_for(settings), instances[0])
    finished = threading.Event()

    def collected_inside_get() -> None:
        with registry._lock:  # as when the collector interrupts get() with the lock held
            instances.clear()
            gc.collect()
        finished.set()

    worker = threading.Thread(target=collected_inside_get, daemon=True)
    worker.start()
    worker.join(5)
    assert finished.is_set(), "the finalizer waited for a lock its own thread held"
    assert registry.open_stores() == 0


def test_a_store_stays_open_while_any_instance_claims_it(settings: RedisSettings) -> None:
    registry = StoreRegistry()
    first, second = Instance(), Instance()
    store = registry.get(config_for(settings), first)
    assert registry.get(config_for(settings), second) is store
    del first
    gc.collect()
    assert registry.open_stores() == 1
    del second
    gc.collect()
    assert registry.open_stores() == 0


def test_another_setting_gets_another_store(settings: RedisSettings) -> None:
    registry = StoreRegistry()
    one, other = Instance(), Instance()
    a = registry.get(config_for(settings), one)
    b = registry.get(config_for(settings, read_timeout=1001), other)
    assert a is not b and registry.open_stores() == 2
