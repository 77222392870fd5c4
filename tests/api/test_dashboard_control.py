"""The dashboard for scientists and its job controls, over real HTTP against a real master: a
scientist signed in sees only their own jobs and no client; the session cookie authorises a job
control only with the X-Dockercomp-Session header (the CSRF rule), and nothing else."""

import json
from typing import Any

import requests

from tests.sim import SimClient, job_file, put_blob, wait_for

from .helpers import assert_error

TIMEOUT = 10
SESSION = {"X-Dockercomp-Session": "1"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(master: Any, token: str, name: str, units: int = 1) -> str:
    """A job of ``units`` units made by the holder of ``token``; no client runs it."""
    chunks = [put_blob(master.url, b"%s unit %d\n" % (name.encode(), i)) for i in range(units)]
    body = {"job": job_file(name), "chunks": chunks}
    response = requests.post(f"{master.api}/jobs", json=body, headers=bearer(token), timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def signed_in(master: Any, token: str) -> requests.Session:
    """A browser's view of the master after signing in: a session holding the cookie only."""
    session = requests.Session()
    response = session.post(f"{master.api}/session", headers=bearer(token), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert "dockercomp_token" in session.cookies
    return session


def read(session: requests.Session, master: Any, path: str) -> Any:
    response = session.get(f"{master.api}{path}", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def control(session: requests.Session, master: Any, job: str, verb: str) -> Any:
    """What the page's button does: the verb, with the cookie and the header; the job's status."""
    response = session.post(f"{master.api}/jobs/{job}/{verb}", headers=SESSION, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def state(master: Any, job: str) -> str:
    response = requests.get(f"{master.api}/jobs/{job}", headers=master.headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["state"]


def first_snapshot(session: requests.Session, master: Any) -> Any:
    """The first ``snapshot`` event of the live feed this session sees."""
    with session.get(f"{master.api}/events", stream=True, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.text
        event = ""
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                return json.loads(line[6:])
    raise AssertionError("the feed ended without a snapshot")


def test_a_scientist_signed_in_sees_only_their_jobs_and_no_clients(master: Any) -> None:
    alice, bob = master.key("scientist", "alice"), master.key("scientist", "bob")
    mine, theirs = submit(master, alice, "mine"), submit(master, bob, "theirs")
    operators = submit(master, master.token, "ops")
    SimClient(master.url, "volunteer-box").register()
    session = signed_in(master, alice)
    assert read(session, master, "/session") == {"role": "scientist", "name": "alice"}

    snap = read(session, master, "/dashboard")
    assert [j["id"] for j in snap["jobs"]] == [mine] and snap["jobs"][0]["owner"] == "alice"
    assert snap["clients"] == []
    assert snap["overview"]["clients_online"] == 1  # counts name no one: they stay
    assert [j["id"] for j in read(session, master, "/dashboard/jobs")["jobs"]] == [mine]
    assert read(session, master, f"/dashboard/jobs/{mine}")["job"]["id"] == mine
    for job in (theirs, operators):
        assert_error(session.get(f"{master.api}/dashboard/jobs/{job}", timeout=TIMEOUT), 404, "no job")
    assert_error(session.get(f"{master.api}/dashboard/clients", timeout=TIMEOUT), 403, "scientist token may not")
    assert_error(session.get(f"{master.api}/clients", timeout=TIMEOUT), 403, "scientist token may not")

    # the live feed too, while the operator watches the whole picture on the same feed
    operator = signed_in(master, master.token)
    whole = first_snapshot(operator, master)
    assert {j["id"] for j in whole["jobs"]} == {mine, theirs, operators}
    assert [c["name"] for c in whole["clients"]] == ["volunteer-box"]
    own = first_snapshot(session, master)
    assert [j["id"] for j in own["jobs"]] == [mine] and own["clients"] == []
    assert {j["id"] for j in read(operator, master, "/dashboard")["jobs"]} == {mine, theirs, operators}


def test_a_volunteer_cannot_sign_in(master: Any) -> None:
    response = requests.post(f"{master.api}/session", headers=bearer(master.key("volunteer")), timeout=TIMEOUT)
    assert_error(response, 403, "volunteer token may not")
    assert "Set-Cookie" not in response.headers


def test_the_owner_controls_a_job_with_the_cookie_and_the_header(master: Any) -> None:
    alice = master.key("scientist", "alice")
    job = submit(master, alice, "controlled", units=2)
    session = signed_in(master, alice)
    page = read(session, master, f"/dashboard/jobs/{job}")["job"]
    assert (page["state"], page["drmaa2"]) == ("running", "Queued")
    assert page["actions"] == ["suspend", "hold", "cancel"]  # queued: it can still be held

    body = control(session, master, job, "suspend")
    assert (body["state"], body["drmaa2"]) == ("suspended", "Suspended") and body["suspended_at"]
    assert body["units"]["suspended"] == 2
    page = read(session, master, f"/dashboard/jobs/{job}")["job"]
    assert (page["state"], page["drmaa2"], page["actions"]) == ("suspended", "Suspended", ["resume", "cancel"])
    assert [j["actions"] for j in read(session, master, "/dashboard")["jobs"]] == [["resume", "cancel"]]

    assert control(session, master, job, "resume")["state"] == "running"
    assert control(session, master, job, "hold")["drmaa2"] == "QueuedHeld"
    assert read(session, master, f"/dashboard/jobs/{job}")["job"]["actions"] == ["release", "cancel"]
    assert control(session, master, job, "cancel")["state"] == "cancelled"
    assert read(session, master, f"/dashboard/jobs/{job}")["job"]["actions"] == []

    # the operator's session may act on anyone's job
    other = submit(master, alice, "by-the-operator")
    operator = signed_in(master, master.token)
    assert control(operator, master, other, "suspend")["state"] == "suspended"


def test_the_cookie_without_the_header_writes_nothing(master: Any) -> None:
    alice = master.key("scientist", "alice")
    job = submit(master, alice, "guarded")
    session = signed_in(master, alice)
    for headers in ({}, {"X-Dockercomp-Session": "0"}, {"Content-Type": "text/plain"}):
        response = session.post(f"{master.api}/jobs/{job}/cancel", headers=headers, data=b"", timeout=TIMEOUT)
        assert_error(response, 401, "X-Dockercomp-Session: 1", "Authorization: Bearer")
    assert state(master, job) == "running"
    # only the job controls take the cookie for writing: everything else needs a bearer token
    blob = put_blob(master.url, b"more\n")
    body = {"job": job_file("by-cookie"), "chunks": [blob]}
    response = session.post(f"{master.api}/jobs", json=body, headers=SESSION, timeout=TIMEOUT)
    assert_error(response, 401, "needs a token")
    key = {"name": "by-cookie", "role": "operator"}
    response = session.post(f"{master.api}/keys", json=key, headers=SESSION, timeout=TIMEOUT)
    assert_error(response, 401, "needs a token")
    assert len(read(session, master, "/dashboard")["jobs"]) == 1


def test_another_scientists_job_is_not_there_for_controls(master: Any) -> None:
    alice, bob = master.key("scientist", "alice"), master.key("scientist", "bob")
    job = submit(master, bob, "bobs")
    session = signed_in(master, alice)
    for verb in ("suspend", "cancel"):
        response = session.post(f"{master.api}/jobs/{job}/{verb}", headers=SESSION, timeout=TIMEOUT)
        assert_error(response, 404, "no job")
    assert state(master, job) == "running"


def test_resuming_a_done_job_is_a_409_that_says_done(master: Any) -> None:
    alice = master.key("scientist", "alice")
    job = submit(master, alice, "quick")
    client = SimClient(master.url, "worker")
    client.register()
    (grant,) = client.lease(1)
    client.upload([client.report(grant)])
    wait_for(lambda: state(master, job) == "done", 5, "the job done")
    session = signed_in(master, alice)
    page = read(session, master, f"/dashboard/jobs/{job}")["job"]
    assert (page["drmaa2"], page["actions"]) == ("Done", [])
    response = session.post(f"{master.api}/jobs/{job}/resume", headers=SESSION, timeout=TIMEOUT)
    assert_error(response, 409, "is done", "DRMAA2 Done")
