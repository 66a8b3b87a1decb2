"""Any account name in the API's paths: ``/`` and ``%`` percent-encoded, the name is one segment."""

from __future__ import annotations

from urllib.parse import quote

from creditgate.core.config import RedisSettings
from creditgate.service.paths import routed_path
from tests.service_support import running_service


def test_account_names_with_slashes_and_percent_signs_are_addressed_encoded(settings: RedisSettings) -> None:
    names = ["team/alpha", "a/b/ledger", "100%2Fsure", "caf\u00e9 bar", "/lead"]
    with running_service(settings) as api:
        assert api.call("POST", "/v1/plans", json={"name": "pro", "allowance": 0}).ok
        for i, name in enumerate(names):
            path = "/v1/accounts/" + quote(name, safe="")
            assert api.call("PUT", path + "/subscription", json={"plan": "pro"}).status_code == 200
            grant = api.call(
                "POST", path + "/grants", json={"amount": 10 + i}, headers={"Idempotency-Key": "k"}
            )
            assert grant.status_code == 201, grant.text
        for i, name in enumerate(names):
            path = "/v1/accounts/" + quote(name, safe="")
            shown = api.call("GET", path).json()
            assert (shown["account"], shown["balance"]) == (name, 10 + i)
            ledger = api.call("GET", path + "/ledger").json()
            assert [e["amount"] for e in ledger["entries"]] == [10 + i]
        listed = {a["account"] for a in api.call("GET", "/v1/accounts").json()["accounts"]}
        assert listed == set(names)
        # Unencoded, a slash separates segments: "team/alpha" is not found as "team" + "/alpha".
        assert api.call("GET", "/v1/accounts/team/alpha").status_code == 404


def test_the_routed_path_keeps_only_encoded_slashes_and_percent_signs() -> None:
    assert routed_path(b"/v1/accounts/a%2fb%20c%25d/ledger") == "/v1/accounts/a%2Fb c%25d/ledger"
    assert routed_path(b"/v1/accounts/%C3%A9") == "/v1/accounts/\u00e9"
