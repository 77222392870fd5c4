"""Who may call what, for every route of the master's table (server/app.py ROUTES), over real
HTTP against a real master: no token, a wrong one, an expired one, a revoked one and each role
the route does not admit are refused (401, or 403 for a known caller of the wrong role), a
scientist's job is invisible to another (404), and none of those refusals changes anything."""

import json
import re
import time
from typing import Any

import pytest
import requests

from dockercomp.server.app import ROUTES
from dockercomp.server.auth import Role
from tests.sim import SimClient, job_file, put_blob

from .helpers import assert_error

REQUEST_TIMEOUT = 10


class World:
    """One master with one caller of each role, a job of scientist A, an image, a client."""

    def __init__(self, master: Any) -> None:
        self.master = master
        self.tokens = {
            Role.OPERATOR: master.token,
            Role.SCIENTIST: master.key("scientist", "sci-a"),
            Role.VOLUNTEER: master.key("volunteer", "vol-a"),
        }
        self.other_scientist = master.key("scientist", "sci-b")
        client = SimClient(master.url, enroll=self.tokens[Role.VOLUNTEER])
        client.register()
        self.client = client
        self.tokens[Role.CLIENT] = client.token
        blob = put_blob(master.url, b"some input\n")
        response = requests.post(
            f"{master.api}/jobs", json={"job": job_file("a-job"), "chunks": [blob]},
            headers=self.bearer(Role.SCIENTIST), timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
        assert response.status_code == 201, response.text
        self.job = response.json()["job"]
        self.image = response.json()["image"]
        self.blob = blob

    def bearer(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def path(self, pattern: str) -> str:
        """A concrete path for a route's pattern: each group filled with something that exists."""
        values = iter([self.job, self.image, self.blob, "sci-a"])

        def fill(group: re.Match[str]) -> str:
            text = group.group(0)
            if "sha256" in text:
                return self.image
            if re.fullmatch(r"\(\w+(\|\w+)+\)", text):  # a choice of words, such as a job's verbs
                return text[1:].split("|")[0]
            if "jobs" in pattern:
                return self.job
            if "keys" in pattern:
                return "sci-b"
            if "blobs" in pattern:
                return self.blob
            if "signers" in pattern:
                return "0" * 64
            if "dist" in pattern:
                return "dockercomp-0.1.0-py3-none-any.whl"
            return next(values)

        path = re.sub(r"\((?:[^()]|\([^()]*\))*\)", fill, pattern)
        return path.replace("\\", "").replace("/()", "/").replace("$", "")

    def state(self) -> dict[str, Any]:
        """What a refused request must not change: jobs, keys, images, clients."""
        get = {"headers": self.bearer(Role.OPERATOR), "timeout": REQUEST_TIMEOUT}
        jobs = requests.get(f"{self.master.api}/jobs", **get).json()["jobs"]
        keys = requests.get(f"{self.master.api}/keys", **get).json()["keys"]
        images = requests.get(f"{self.master.api}/images", **get).json()["images"]
        clients = requests.get(f"{self.master.api}/clients", **get).json()["clients"]
        return {
            "jobs": [(j["id"], j["state"]) for j in jobs],
            "keys": [(k["name"], k["state"]) for k in keys],
            "images": [(i["id"], i["tags"], len(i["signatures"])) for i in images],
            "clients": sorted(c["id"] for c in clients),
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.masters import Masters

    masters = Masters(tmp_path_factory.mktemp("access"))
    try:  # a World that fails to set up still stops its master
        yield World(masters.start(open_enrollment=False))
    finally:
        masters.close()


def refused(response: requests.Response, status: int, *fragments: str) -> None:
    if response.request.method == "HEAD":  # no body to say why
        assert response.status_code == status, response.status_code
    else:
        assert_error(response, status, *fragments)


def send(world: World, method: str, path: str, headers: dict[str, str]) -> requests.Response:
    body = b"{}" if method in ("POST", "PUT") else None
    headers = {"Content-Type": "application/json", **headers} if body else headers
    return requests.request(method, f"{world.master.url}{path}", data=body, headers=headers, timeout=REQUEST_TIMEOUT)


CASES = [
    (pattern, method, frozenset(allowed))
    for pattern, _, access in ROUTES
    for method, allowed in access.items()
    if Role.ANONYMOUS not in allowed
]


@pytest.mark.parametrize(("pattern", "method", "allowed"), CASES, ids=[f"{m} {p}" for p, m, _ in CASES])
def test_every_route_refuses_whoever_it_does_not_admit(world: World, pattern: str, method: str, allowed: Any) -> None:
    path = world.path(pattern)
    before = world.state()
    refused(send(world, method, path, {}), 401, "needs a token")
    refused(send(world, method, path, {"Authorization": "Bearer wrong-token"}), 401, "unknown token")
    refused(send(world, method, path, {"Authorization": "Basic dXNlcjpwYXNz"}), 401, "Bearer")
    for role in set(world.tokens) - set(allowed):
        refused(send(world, method, path, world.bearer(role)), 403, f"a {role.value} token may not")
    assert world.state() == before


@pytest.mark.parametrize(("pattern", "access"), [(p, a) for p, _, a in ROUTES], ids=[p for p, _, _ in ROUTES])
def test_a_method_the_table_does_not_list_is_not_there(world: World, pattern: str, access: Any) -> None:
    """Whatever a handler implements, only the methods the table lists can be called."""
    path = world.path(pattern)
    for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - set(access):
        response = send(world, method, path, world.bearer(Role.OPERATOR))
        assert_error(response, 405, "is not a method")
        assert set(response.headers["Allow"].split(", ")) == set(access)


def test_anonymous_routes_need_no_token(world: World) -> None:
    anonymous = [(p, m) for p, _, access in ROUTES for m, allowed in access.items() if Role.ANONYMOUS in allowed]
    assert {"/api/v1/health", "/install.sh", "/cleanup"} <= {world.path(p) for p, _ in anonymous}
    assert requests.get(f"{world.master.api}/health", timeout=REQUEST_TIMEOUT).json() == {"ok": True}
    assert requests.get(f"{world.master.url}/install.sh", timeout=REQUEST_TIMEOUT).status_code == 200


def test_another_scientists_job_is_not_there(world: World) -> None:
    other = {"Authorization": f"Bearer {world.other_scientist}"}
    for suffix in ("", "/units", "/results?partial=1"):
        response = requests.get(f"{world.master.api}/jobs/{world.job}{suffix}", headers=other, timeout=10)
        assert_error(response, 404, f"no job {world.job!r}")
    listed = requests.get(f"{world.master.api}/jobs", headers=other, timeout=10).json()["jobs"]
    assert listed == []
    own = requests.get(f"{world.master.api}/jobs", headers=world.bearer(Role.SCIENTIST), timeout=10).json()["jobs"]
    assert [(j["id"], j["owner"]) for j in own] == [(world.job, "sci-a")]
    everyone = requests.get(f"{world.master.api}/jobs", headers=world.bearer(Role.OPERATOR), timeout=10).json()
    assert world.job in {j["id"] for j in everyone["jobs"]}


def test_revoked_and_expired_tokens_are_refused_at_once(world: World) -> None:
    master = world.master
    doomed = master.key("scientist", "doomed")
    headers = {"Authorization": f"Bearer {doomed}"}
    assert requests.get(f"{master.api}/jobs", headers=headers, timeout=10).status_code == 200
    revoke = requests.delete(f"{master.api}/keys/doomed", headers=master.headers, timeout=10)
    assert revoke.status_code == 200 and revoke.json() == {"name": "doomed", "revoked": 1}
    assert_error(requests.get(f"{master.api}/jobs", headers=headers, timeout=10), 401, "revoked")
    brief = master.key("scientist", "brief", expires="1s")
    assert requests.get(f"{master.api}/jobs", headers={"Authorization": f"Bearer {brief}"}, timeout=10).ok
    time.sleep(1.2)
    response = requests.get(f"{master.api}/jobs", headers={"Authorization": f"Bearer {brief}"}, timeout=10)
    assert_error(response, 401, "expired")


def test_revoking_a_volunteer_account_revokes_its_machines(world: World) -> None:
    master = world.master
    account = master.key("volunteer", "vol-doomed")
    machines = [SimClient(master.url, name=f"m{i}", enroll=account) for i in range(2)]
    for machine in machines:
        machine.register()
        machine.heartbeat()
    clients = requests.get(f"{master.api}/clients", headers=master.headers, timeout=10).json()["clients"]
    assert {c["account"] for c in clients if c["id"] in {m.id for m in machines}} == {"vol-doomed"}
    # one machine first, then the whole account
    assert requests.delete(f"{master.api}/keys/{machines[0].id}", headers=master.headers, timeout=10).ok
    with pytest.raises(Exception, match="revoked"):
        machines[0].heartbeat()
    machines[1].heartbeat()
    assert requests.delete(f"{master.api}/keys/vol-doomed", headers=master.headers, timeout=10).json()["revoked"] == 2
    for machine in machines:
        with pytest.raises(Exception, match="revoked"):
            machine.heartbeat()
    stranger = SimClient(master.url, name="again", enroll=account)
    with pytest.raises(Exception, match="revoked"):
        stranger.register()


def test_registration_needs_a_volunteer_token_unless_enrollment_is_open(world: World, master_factory: Any) -> None:
    body = {"name": "n", "slots": 1}
    url = f"{world.master.api}/clients/register"
    packed = {"Content-Type": "application/json"}
    assert_error(requests.post(url, json=body, timeout=10), 401, "enrolls volunteers by token")
    scientist = world.bearer(Role.SCIENTIST) | packed
    assert_error(requests.post(url, json=body, headers=scientist, timeout=10), 403, "scientist token may not")
    volunteer = world.bearer(Role.VOLUNTEER) | packed
    reply = requests.post(url, json=body, headers=volunteer, timeout=10)
    assert reply.status_code == 200, reply.text
    token = reply.json()["token"]
    assert token.startswith("dct_") and len(token) >= 4 + 43  # 32 random bytes, never a leading "-"
    open_master = master_factory()
    first = SimClient(open_master.url, name="stranger-1")
    second = SimClient(open_master.url, name="stranger-2")
    first.register()
    second.register()
    clients = requests.get(f"{open_master.api}/clients", headers=open_master.headers, timeout=10).json()["clients"]
    accounts = {c["account"] for c in clients}
    assert len(accounts) == 2 and all(a.startswith("open-") for a in accounts)  # each stranger its own account


def test_a_cross_site_form_post_makes_no_job(world: World) -> None:
    """A browser may send text/plain or a form to any site without asking: never read as JSON."""
    headers = world.bearer(Role.OPERATOR)
    before = world.state()
    body = json.dumps({"job": {"name": "x", "image": "dockercomp/sim"}, "chunks": [world.blob]})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = requests.post(f"{world.master.api}/jobs", data=body, headers=headers | {"Content-Type": ctype})
        assert_error(response, 415, "application/json")
    assert world.state() == before


def test_the_operator_token_file_is_private(world: World) -> None:
    path = world.master.data_dir / "operator.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == world.master.token
    assert "operator token (shown once" in world.master.log()
