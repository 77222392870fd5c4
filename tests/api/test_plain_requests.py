"""A heartbeat, a lease and results are answered as plain requests (server/handlers.py
PlainRequests), past Tornado's RequestHandler; the same request with a query string goes
through the route's handler. Both ways
must authorise and answer alike: the same statuses, messages and headers for every refusal
(no token, a bad one, a revoked one at once, a role the route does not admit, a bad body),
and the same reply to a good heartbeat."""

from typing import Any

import pytest
import requests

from tests.masters import MasterProcess
from tests.sim import MSGPACK, pack

from .helpers import assert_error, decoded, registered

PLAIN = "/api/v1/clients/heartbeat"  # with ?via=handler, not an exact path: the application's handler answers
HEADERS = ("Content-Type", "Retry-After", *(
    "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options", "Content-Security-Policy", "Cache-Control",
))  # fmt: skip


def both(
    master: MasterProcess, body: bytes, headers: dict[str, str], path: str = PLAIN
) -> tuple[requests.Response, requests.Response]:
    """The same request sent the plain way and through the handler; their replies, checked alike."""
    replies = tuple(
        requests.post(f"{master.url}{url}", data=body, headers=headers, timeout=10)
        for url in (path, f"{path}?via=handler")
    )
    plain, handled = replies
    assert plain.status_code == handled.status_code, (plain.text, handled.text)
    assert decoded(plain) == decoded(handled)
    assert {h: plain.headers.get(h) for h in HEADERS} == {h: handled.headers.get(h) for h in HEADERS}
    assert "Date" in plain.headers and "Traceback" not in plain.text
    return plain, handled


def heartbeat(token: str | None, body: Any = None, ctype: str = MSGPACK, **extra: str) -> tuple[bytes, dict[str, str]]:
    headers = {"Content-Type": ctype, **extra} | ({"Authorization": f"Bearer {token}"} if token else {})
    return pack({"slots": 1, "busy": 0} if body is None else body), headers


def test_a_plain_heartbeat_is_answered_as_the_handler_answers_it(shared_master: MasterProcess) -> None:
    master = shared_master
    client = registered(master.url, "plain")
    plain, _ = both(master, *heartbeat(client.token))
    assert plain.status_code == 200 and plain.headers["Content-Type"] == MSGPACK
    assert decoded(plain) == {"commands": [], "interval": 10.0}
    body = b'{"slots": 1, "busy": 0}'
    json_reply, _ = both(master, body, heartbeat(client.token, ctype="application/json")[1])
    assert json_reply.headers["Content-Type"].startswith("application/json") and json_reply.json()["interval"] == 10.0
    both(master, *heartbeat(client.token, Accept="application/json"))


@pytest.mark.parametrize(
    ("case", "status", "fragment"),
    [
        ("no token", 401, "needs a token"),
        ("not bearer", 401, "Bearer TOKEN"),
        ("unknown token", 401, "unknown token"),
        ("scientist", 403, "a scientist token may not"),
        ("volunteer", 403, "a volunteer token may not"),
        ("operator", 403, "operator token may not"),
        ("text body", 415, "not text/plain"),
        ("empty body", 400, "empty"),
        ("bad slots", 400, "slots must be"),
        ("not a heartbeat", 400, "slots"),  # a field of the wrong type
    ],
)
def test_every_refusal_is_the_same_both_ways(
    shared_master: MasterProcess, case: str, status: int, fragment: str
) -> None:
    master = shared_master
    client = registered(master.url, f"refused-{case.replace(' ', '-')}")
    tokens = {"scientist": master.key("scientist"), "volunteer": master.key("volunteer"), "operator": master.token}
    body, headers = {
        "no token": heartbeat(None),
        "not bearer": heartbeat(None, Authorization=f"Basic {client.token}"),
        "unknown token": heartbeat("dct_" + "x" * 43),
        "text body": heartbeat(client.token, ctype="text/plain"),
        "empty body": (b"", heartbeat(client.token)[1]),
        "bad slots": heartbeat(client.token, {"slots": -1, "busy": 0}),
        "not a heartbeat": heartbeat(client.token, {"slots": "one"}),
    }.get(case) or heartbeat(tokens[case])
    for reply in both(master, body, headers):
        assert_error(reply, status, fragment)


def test_a_revoked_client_token_is_refused_at_once_both_ways(shared_master: MasterProcess) -> None:
    master = shared_master
    client = registered(master.url, "revoked")
    assert both(master, *heartbeat(client.token))[0].ok
    revoke = requests.delete(f"{master.api}/keys/{client.id}", headers=master.headers, timeout=10)
    assert revoke.status_code == 200 and revoke.json()["revoked"] == 1
    for reply in both(master, *heartbeat(client.token)):
        assert_error(reply, 401, "revoked")


def test_bad_tokens_from_one_address_are_limited_the_plain_way_too(master_factory: Any) -> None:
    master = master_factory("--auth-failure-burst", "2", "--auth-failure-rate", "0.001")
    client = registered(master.url, "limited")
    bad = heartbeat("dct_" + "y" * 43)
    for _ in range(2):
        assert_error(requests.post(f"{master.url}{PLAIN}", data=bad[0], headers=bad[1], timeout=10), 401, "unknown")
    limited = requests.post(f"{master.url}{PLAIN}", data=bad[0], headers=bad[1], timeout=10)
    assert_error(limited, 429, "failed sign-ins")
    assert int(limited.headers["Retry-After"]) >= 1
    good = heartbeat(client.token)
    assert requests.post(
        f"{master.url}{PLAIN}", data=good[0], headers=good[1], timeout=10
    ).ok  # a good token still works


@pytest.mark.parametrize("path", ["/api/v1/lease", "/api/v1/results"])
def test_leases_and_results_are_refused_alike_both_ways(shared_master: MasterProcess, path: str) -> None:
    master = shared_master
    client = registered(master.url, f"refused-{path.rsplit('/', 1)[1]}")
    good, bad = {
        "/api/v1/lease": ({"max_units": 0}, {"max_units": "many"}),
        "/api/v1/results": ({"results": []}, {"results": 3}),
    }[path]
    for token, body, status, fragment in [
        (None, good, 401, "needs a token"),
        (master.key("volunteer"), good, 403, "a volunteer token may not"),
        (client.token, bad, 400, "must be"),
    ]:
        for reply in both(master, *heartbeat(token, body), path=path):
            assert_error(reply, status, fragment)
    assert all(reply.ok for reply in both(master, *heartbeat(client.token, good), path=path))


def test_a_refused_plain_body_is_not_kept(shared_master: MasterProcess) -> None:
    """A caller without a token is refused before its body is read: a large one is dropped."""
    body = pack({"results": [{"attempt": "a", "status": "succeeded", "output": b"x" * (4 << 20)}]})
    reply = requests.post(f"{shared_master.url}/api/v1/results", data=body, headers={"Content-Type": MSGPACK})
    assert_error(reply, 401, "needs a token")
