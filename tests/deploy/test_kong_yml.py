"""kong.yml as Kong would load it: decK's checks, the plugin's dumped schema, and the fail-closed wiring.

Kong cannot run here, so each part of what Kong does with the file is checked with the tool that does
the same job: ``deck validate`` (and a check of our own) for the entities and their references, the
schema the real plugin server reports with ``--dump`` (what Kong validates ``config`` against) through
``kong_schema.validate``, then the plugin's own parser for the cross-field rules Kong cannot express.
Also the helpers the other ``test_deploy_*`` modules use to read the file (:class:`KongYml`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from creditgate.core.config import Role, parse_config
from creditgate.core.kong_schema import validate
from creditgate.errors import ConfigError
from creditgate.store.keys import TOKEN_SECONDS
from tests.core.test_decision import validate_problem
from tests.gate_fixtures import PLUGIN_SERVER
from tests.harness import PluginConfig, PluginInfo

ROOT = Path(__file__).resolve().parents[2]
KONG_YML = ROOT / "kong.yml"
COMPOSE_YML = ROOT / "docker-compose.yml"
GATE = "credit-gate"

# Kong's lookup order for the one entry of a plugin that runs on a request, most specific first
# (kong/runloop/plugins_iterator.lua, lookup_cfg): which of route, service, consumer the entry names.
PRECEDENCE = [
    (True, True, True),
    (True, False, True),
    (False, True, True),
    (True, True, False),
    (False, False, True),
    (True, False, False),
    (False, True, False),
    (False, False, False),
]


@dataclass(frozen=True)
class PluginEntry:
    """One plugin entity of kong.yml, with the scope its place in the file gives it."""

    name: str
    config: dict[str, Any]
    where: str
    route: str | None = None
    service: str | None = None
    consumer: str | None = None

    def applies_to(self, route: str, service: str, consumer: str | None) -> bool:
        return (
            self.route in (None, route)
            and self.service in (None, service)
            and self.consumer in (None, consumer)
            and (self.consumer is None or consumer is not None)
        )

    @property
    def scope(self) -> tuple[bool, bool, bool]:
        return (self.route is not None, self.service is not None, self.consumer is not None)

    def plugin_config(self, redis_host: str, redis_port: int) -> PluginConfig:
        """This entry as Kong hands it to the plugin server, with Redis moved to the test's server."""
        config = json.loads(json.dumps(self.config))
        config["redis"] = {**config.get("redis", {}), "host": redis_host, "port": redis_port}
        return PluginConfig(
            config=config,
            plugin_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"kong.yml:{self.where}")),
            # Kong's __seq__ changes with the configuration: another config is another instance.
            seq=zlib.crc32(json.dumps(config, sort_keys=True).encode()),
            route_id=self.route,
            service_id=self.service,
            consumer_id=consumer_id(self.consumer) if self.consumer else None,
        )


def consumer_id(username: str) -> str:
    """A stable id for a kong.yml consumer (Kong makes up its own; the demo names accounts by username)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"consumer:{username}"))


class KongYml:
    """kong.yml, parsed, with the lookups the deployment tests need."""

    def __init__(self, path: Path = KONG_YML) -> None:
        self.path = path
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))

    @property
    def services(self) -> list[dict[str, Any]]:
        return list(self.doc.get("services") or [])

    @property
    def consumers(self) -> list[dict[str, Any]]:
        return list(self.doc.get("consumers") or [])

    def routes(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(route, its service) for every route nested in a service."""
        for service in self.services:
            for route in service.get("routes") or []:
                yield route, service

    def route(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        for route, service in self.routes():
            if route.get("name") == name:
                return route, service
        raise KeyError(f"kong.yml has no route named {name!r}")

    def plugins(self, name: str | None = None) -> list[PluginEntry]:
        found: list[PluginEntry] = []
        for service in self.services:
            for p in service.get("plugins") or []:
                found.append(_entry(p, f"services.{service['name']}", service=service["name"]))
            for route in service.get("routes") or []:
                for p in route.get("plugins") or []:
                    found.append(_entry(p, f"routes.{route['name']}", route=route["name"]))
        for consumer in self.consumers:
            for p in consumer.get("plugins") or []:
                where = f"consumers.{consumer['username']}"
                found.append(_entry(p, where, consumer=consumer["username"]))
        for i, p in enumerate(self.doc.get("plugins") or []):
            found.append(
                _entry(
                    p,
                    f"plugins[{i}]",
                    route=p.get("route"),
                    service=p.get("service"),
                    consumer=p.get("consumer"),
                )
            )
        return [p for p in found if name is None or p.name == name]

    def plugin_for(self, name: str, route: str, consumer: str | None) -> PluginEntry | None:
        """The entry of plugin ``name`` Kong runs on a request to ``route`` by ``consumer``."""
        _, service = self.route(route)
        candidates = [p for p in self.plugins(name) if p.applies_to(route, service["name"], consumer)]
        for scope in PRECEDENCE:
            for entry in candidates:
                if entry.scope == scope:
                    return entry
        return None

    def upstream(self, name: str) -> dict[str, Any] | None:
        return next((u for u in self.doc.get("upstreams") or [] if u.get("name") == name), None)

    def upstream_names(self) -> set[str]:
        return {u["name"] for u in self.doc.get("upstreams") or []}

    def key_of(self, username: str) -> str:
        consumer = next(c for c in self.consumers if c["username"] == username)
        key: str = consumer["keyauth_credentials"][0]["key"]
        return key

    def consumer_by_key(self, key: str) -> str | None:
        for consumer in self.consumers:
            if any(c.get("key") == key for c in consumer.get("keyauth_credentials") or []):
                return str(consumer["username"])
        return None


def _entry(raw: dict[str, Any], where: str, **scope: str | None) -> PluginEntry:
    return PluginEntry(name=raw["name"], config=dict(raw.get("config") or {}), where=where, **scope)


@cache
def kong_yml() -> KongYml:
    return KongYml()


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_YML.read_text(encoding="utf-8"))
    return doc


def required_tool(name: str) -> str:
    """A command the deployment tests run: first beside this Python (what `make setup` puts in the
    virtual environment: docker-compose, hadolint), then on the PATH (redis-server, deck)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(f"`{name}` is not installed: `make setup` installs it (see .ci/system-tools)")
    return path


# decK: one check among several. Debian's decK is 1.4.0 (older than Kong 3.0): it checks the entities
# and their references, not a plugin's config, which the schema checks below do with the plugin's own
# dumped schema, and test_every_plugin_names_an_entity_that_exists repeats the reference check.


def deck_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [required_tool("deck"), "validate", "--state", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.server
def test_deck_validates_kong_yml_and_refuses_a_plugin_that_names_a_missing_route(tmp_path: Path) -> None:
    result = deck_validate(KONG_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a broken reference is an error, not a warning.
    broken = dict(kong_yml().doc)
    broken["plugins"] = [{"name": GATE, "route": "no-such-route", "config": {"cost": 1}}]
    path = tmp_path / "kong.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert deck_validate(path).returncode != 0


def test_every_plugin_names_an_entity_that_exists() -> None:
    """The references decK checks, checked without decK: a top-level plugin's route, service, consumer."""
    doc = kong_yml()
    routes = {route["name"] for route, _ in doc.routes()}
    services = {service["name"] for service in doc.services}
    consumers = {consumer["username"] for consumer in doc.consumers}
    for entry in doc.plugins():
        assert entry.route is None or entry.route in routes, entry.where
        assert entry.service is None or entry.service in services, entry.where
        assert entry.consumer is None or entry.consumer in consumers, entry.where


# The plugin's schema, as Kong validates kong.yml with it


@pytest.fixture(scope="module")
def dumped() -> PluginInfo:
    """What Kong learns from the query command: the first entry of the real server's ``--dump``."""
    return PluginInfo.query(PLUGIN_SERVER)


def gate_entries() -> list[PluginEntry]:
    entries = kong_yml().plugins(GATE)
    assert len(entries) >= 3, "kong.yml should price two routes and one consumer"
    return entries


def charging(entry: PluginEntry) -> bool:
    """An entry in the gate role (the default), as opposed to one answering the client's balance."""
    return bool(entry.config.get("role", "gate") == "gate")


@pytest.mark.parametrize("entry", gate_entries(), ids=lambda e: e.where)
@pytest.mark.server
def test_every_credit_gate_entry_passes_kongs_schema_check_and_the_plugins_parser(
    dumped: PluginInfo, entry: PluginEntry
) -> None:
    filled, errors = validate(dumped.config_fields, entry.config)
    assert errors == [], f"{entry.where}: Kong would refuse to load kong.yml: {errors}"
    # What the instance receives: the filled config plus the ids Kong adds.
    extra = {"route_id": entry.route, "service_id": entry.service, "consumer_id": entry.consumer}
    try:
        parsed = parse_config({**filled, **{k: v for k, v in extra.items() if v}})
    except ConfigError as error:
        pytest.fail(f"{entry.where}: the plugin would refuse every request: {error}")
    if charging(entry):
        assert parsed.cost == entry.config["cost"]
    else:  # a price on an entry that never charges would only mislead its reader
        assert parsed.role is Role.BALANCE and "cost" not in entry.config


@pytest.mark.server
def test_the_schema_check_catches_what_kong_would_refuse(dumped: PluginInfo) -> None:
    config = gate_entries()[0].config
    assert validate(dumped.config_fields, {**config, "cost": "5"})[1] == ["config.cost: expected an integer"]
    assert validate(dumped.config_fields, {**config, "upstrem": "x"})[1] == ["config.upstrem: unknown field"]


@pytest.mark.server
def test_the_dump_kong_reads_names_the_plugin_and_its_priority(dumped: PluginInfo) -> None:
    assert dumped.name == GATE
    # After key-auth (1250), acl (950), rate-limiting (910), proxy-cache (100), request-termination (2).
    assert dumped.priority == 1
    assert dumped.phases == ("access",)


# Fail-closed wiring: no request reaches the API unless the gate sent it there


def paid_services() -> list[dict[str, Any]]:
    names = {service["name"] for route, service in kong_yml().routes() if _priced(route, service)}
    return [s for s in kong_yml().services if s["name"] in names]


def _priced(route: dict[str, Any], service: dict[str, Any]) -> bool:
    return any(p.route == route["name"] or p.service == service["name"] for p in kong_yml().plugins(GATE))


def test_every_gate_entry_sends_allowed_requests_to_an_upstream_that_exists() -> None:
    for entry in gate_entries():
        if not charging(entry):
            assert "upstream" not in entry.config, f"{entry.where}: a balance entry never proxies"
            continue
        name = entry.config.get("upstream")
        assert name, f"{entry.where}: no `upstream`: allowed requests would go to the service's dead end"
        assert name in kong_yml().upstream_names(), f"{entry.where}: upstream {name!r} is not in kong.yml"


def test_the_paid_upstream_targets_the_demo_api_and_the_api_is_not_published() -> None:
    api = compose()["services"]["httpbin"]
    assert "ports" not in api, "the API must be reachable only through Kong"
    for name in {e.config["upstream"] for e in gate_entries() if charging(e)}:
        upstream = kong_yml().upstream(name)
        assert upstream is not None
        # go-httpbin listens on 8080; its compose service name is its host name on the network.
        assert [t["target"] for t in upstream["targets"]] == ["httpbin:8080"]


def test_a_paid_services_own_host_leads_to_kongs_refusal_never_to_the_api() -> None:
    services = paid_services()
    assert [s["name"] for s in services] == ["demo-api"]
    upstream_targets = {
        t["target"].rsplit(":", 1)[0] for u in kong_yml().doc.get("upstreams") or [] for t in u["targets"]
    }
    kong = compose()["services"]["kong"]
    for service in services:
        host = service["host"]
        assert host not in kong_yml().upstream_names(), "the service's default would be the paid upstream"
        assert host not in upstream_targets, "the service's default would be the API itself"
        with pytest.raises(ValueError):
            ipaddress.ip_address(host)  # set_upstream has no effect on an IP host (balancer/init.lua)
        # The name is Kong itself, on the port Kong proxies on...
        assert f"{host}:127.0.0.1" in kong["extra_hosts"]
        listen = kong["environment"]["KONG_PROXY_LISTEN"]
        assert listen.rsplit(":", 1)[1] == str(service["port"]) and service["protocol"] == "http"
        # ...where a route for that host answers 503 itself, with no plugin that could let it through.
        dead_ends = [(r, s) for r, s in kong_yml().routes() if host in (r.get("hosts") or [])]
        assert len(dead_ends) == 1, f"exactly one route must answer Host: {host}"
        route, dead_end_service = dead_ends[0]
        plugins = [
            p
            for p in kong_yml().plugins()
            if p.route == route["name"] or p.service == dead_end_service["name"]
        ]
        # Besides the refusal, only what cannot let a request through: the check that Kong itself sent
        # it, and the log that reports bypassed charges to credit-gate serve.
        assert sorted(p.name for p in plugins) == ["http-log", "ip-restriction", "request-termination"]
        by_name = {p.name: p.config for p in plugins}
        assert by_name["ip-restriction"]["allow"] == ["127.0.0.1"]
        witness_log = by_name["http-log"]
        assert witness_log["http_endpoint"].endswith("/v1/kong/bypassed")
        # Kong's env vault reads CREDIT_GATE_WITNESS_AUTH, "Bearer <one of serve's witness tokens>".
        assert witness_log["headers"]["Authorization"] == "{vault://env/credit-gate-witness-auth}"
        serve = compose()["services"]["credit-gate-api"]["environment"]["CREDIT_GATE_WITNESS_TOKENS"]
        assert kong["environment"]["CREDIT_GATE_WITNESS_AUTH"] == f"Bearer {serve}"
        assert witness_log["http_endpoint"].startswith("http://credit-gate-api:8080/")
        assert witness_log["queue"]["max_retry_time"] < TOKEN_SECONDS  # reported while the token is kept
        config = by_name["request-termination"]
        assert config["status_code"] == 503
        assert config["content_type"] == "application/problem+json"
        body = json.loads(config["body"])
        assert body["status"] == 503 and body["reason"] == "gate_unavailable" and body["detail"]
        validate_problem(body)


def test_every_route_of_a_paid_service_is_priced() -> None:
    """A route without the gate would reach only the dead end: a mistake, never a free pass."""
    for service in paid_services():
        for route in service.get("routes") or []:
            entry = kong_yml().plugin_for(GATE, route["name"], None)
            assert entry is not None, f"route {route['name']} has no credit-gate entry"


def test_authentication_runs_on_every_priced_route() -> None:
    for route, service in kong_yml().routes():
        if _priced(route, service):
            assert kong_yml().plugin_for("key-auth", route["name"], None) is not None


def test_a_consumer_entry_replaces_the_route_entries_for_that_consumer() -> None:
    yml = kong_yml()
    bob = yml.plugin_for(GATE, "premium", "bob")
    alice = yml.plugin_for(GATE, "premium", "alice")
    assert bob is not None and alice is not None
    assert (bob.where, bob.config["cost"]) == ("consumers.bob", 2)
    assert (alice.where, alice.config["cost"]) == ("routes.premium", 5)


def test_the_balance_route_answers_every_consumer_with_a_balance_entry_never_a_charging_one() -> None:
    """A consumer's own entry outranks a route's: without a route+consumer entry of its own, that
    consumer's balance requests would be charged and proxied."""
    for who in [None, *(c["username"] for c in kong_yml().consumers)]:
        entry = kong_yml().plugin_for(GATE, "balance", who)
        assert entry is not None and not charging(entry), f"{who}: {entry and entry.where}"
