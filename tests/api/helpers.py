"""Raw HTTP helpers for the API tests: send msgpack or JSON, check error replies."""

from typing import Any

import requests

from tests.masters import auth
from tests.sim import MSGPACK, SimClient, pack, unpack


def post_mp(url: str, path: str, body: Any, token: str | None = None) -> requests.Response:
    """POST a msgpack body to /api/v1/PATH, with a bearer token when given."""
    headers = {"Content-Type": MSGPACK}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{url}/api/v1{path}", data=pack(body), headers=headers, timeout=30)


def decoded(response: requests.Response) -> Any:
    """The reply body, decoded by its Content-Type."""
    if response.headers.get("Content-Type", "").startswith(MSGPACK):
        return unpack(response.content)
    return response.json()


def assert_error(response: requests.Response, status: int, *fragments: str) -> str:
    """The reply is ``status`` with a body {"error": message} (msgpack when the request was
    msgpack, else JSON) whose message contains every fragment; return the message."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert "Traceback" not in response.text
    sent = response.request.headers.get("Content-Type") or ""
    expected_type = MSGPACK if sent.startswith(MSGPACK) else "application/json"
    assert response.headers.get("Content-Type", "").startswith(expected_type), response.headers
    body = decoded(response)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    message = body["error"]
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    return message


def registered(url: str, name: str = "sim", **kwargs: Any) -> SimClient:
    client = SimClient(url, name=name, **kwargs)
    client.register()
    return client


def jobs(url: str) -> list[dict]:
    """Every job the master lists."""
    response = requests.get(f"{url}/api/v1/jobs", headers=auth(url))
    assert response.status_code == 200
    return response.json()["jobs"]


def post_job(url: str, body: object) -> requests.Response:
    return requests.post(f"{url}/api/v1/jobs", json=body, headers=auth(url))


def image_id(master: Any, ref: str = "dockercomp/sim:latest") -> str:
    """The id of an image the master holds: jobs and grants name their image by it."""
    response = requests.get(f"{master.api}/images/{ref}", headers=master.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def small_body_master(master_factory: Any, limit: str = "2KiB") -> Any:
    """A master whose body limit is ``limit``: one started first with the default limit (a
    stub image is pushed to every test master, in pieces larger than 2KiB), then again on
    its store with the small one."""
    first = master_factory()
    assert first.stop() == 0
    return master_factory("--max-body", limit, data_dir=first.data_dir, token=first.token)
