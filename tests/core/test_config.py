"""The plugin configuration as Kong sends it, parsed once per instance."""

from __future__ import annotations

from typing import Any

import pytest

from creditgate.core.config import AccountBy, parse_config
from creditgate.errors import ConfigError


def kong_config(**changes: Any) -> dict[str, Any]:
    """A config as Kong sends it: every field, nulls for unset ones, and Kong's own keys."""
    config: dict[str, Any] = {
        "cost": 1,
        "plans": [],
        "account_by": "consumer_id",
        "payment_url": None,
        "problem_type_base": "urn:credit-gate:problem:",
        "fault_tolerant": False,
        "hide_client_headers": False,
        "key_prefix": "credit-gate",
        "ledger_retention": 10000,
        "redis": {
            "host": "127.0.0.1",
            "port": 6379,
            "username": None,
            "password": None,
            "database": 0,
            "connect_timeout": 200,
            "read_timeout": 200,
            "ssl": False,
            "ssl_verify": True,
            "server_name": None,
            "ca_file": None,
        },
        "route_id": "7f3c",
        "service_id": None,
        "consumer_id": None,
        "__plugin_id": "p1",
        "__seq__": 4,
    }
    config.update(changes)
    return config


def test_accepts_kongs_extra_keys_and_nulls() -> None:
    config = parse_config(kong_config())
    assert config.cost == 1 and config.account_by is AccountBy.CONSUMER_ID
    assert config.route == "route:7f3c"


def test_a_missing_redis_record_means_the_defaults() -> None:
    assert parse_config(kong_config(redis=None)).redis.port == 6379


def test_charges_are_attributed_to_the_service_without_a_route() -> None:
    assert parse_config(kong_config(route_id=None, service_id="s1")).route == "service:s1"
    assert parse_config(kong_config(route_id=None)).route == "global"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cost": 1.5}, "cost must be a whole number"),
        ({"cost": -1}, "cost must be a whole number from 0"),
        ({"plans": ["Pro Plan"]}, "plans[0]"),
        ({"plans": ["pro", "pro"]}, "lists a plan twice"),
        ({"account_by": "header"}, "account_by must be one of"),
        ({"payment_url": "pay.example.com"}, "payment_url must be an absolute http(s) URL"),
        ({"key_prefix": "a{b}"}, "key_prefix"),
        ({"problem_type_base": "not a uri"}, "problem_type_base"),
    ],
)
def test_rules_the_kong_schema_cannot_express_fail_with_an_operators_message(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        parse_config(kong_config(**changes))


def test_a_bad_redis_timeout_names_the_field() -> None:
    redis = kong_config()["redis"] | {"read_timeout": 0}
    with pytest.raises(ConfigError, match=r"redis\.read_timeout"):
        parse_config(kong_config(redis=redis))


# Kong's encoders cannot tell an empty Lua table from an empty record: an empty array in the config may
# arrive as {} (core/values.py, as_list). It means the empty list wherever the schema declares an array.


def test_an_empty_array_sent_as_an_empty_object_means_the_empty_list() -> None:
    config = parse_config(kong_config(plans={}, costs={}, refund_statuses={}, refund_on_failure=True))
    assert config.plans == () and config.pricing.rules == ()
    assert config.refund is not None and not config.refund.refunds(503)


def test_a_cost_rule_whose_methods_arrive_as_an_empty_object_matches_every_method() -> None:
    config = parse_config(kong_config(costs=[{"methods": {}, "path": "/v1/big", "cost": 5}]))
    assert config.pricing.cost_of("DELETE", "/v1/big") == 5


def test_redis_nodes_sent_as_an_empty_object_mean_none() -> None:
    redis = kong_config()["redis"] | {"cluster_nodes": {}, "sentinel_nodes": {}}
    assert parse_config(kong_config(redis=redis)).redis.cluster_nodes == ()


@pytest.mark.parametrize("name", ["plans", "costs", "refund_statuses"])
def test_an_object_with_fields_where_a_list_is_expected_names_the_field(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be a list"):
        parse_config(kong_config(**{name: {"a": 1}}, refund_on_failure=True))
