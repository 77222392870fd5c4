"""Job control over real HTTP against a real master: suspend, resume, hold, release, cancel,
who may use them, and what the heartbeat then tells the clients."""

import requests

from dockercomp.server.lifecycle import Verb
from tests.masters import auth
from tests.sim import API, create_job, job_file, job_status, put_blob

from .helpers import assert_error, post_job, registered


def control(url: str, job: str, verb: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else auth(url)
    return requests.post(f"{url}{API}/jobs/{job}/{verb}", headers=headers, timeout=30)


def test_suspend_pauses_the_running_attempts_and_resume_resumes_them(master):
    job = create_job(master.url, job_file(), [b"a\n", b"b\n", b"c\n"])
    client = registered(master.url)
    (grant,) = client.lease(1)
    assert job_status(master.url, job)["drmaa2"] == "Running"
    reply = control(master.url, job, "suspend")
    assert reply.status_code == 200, reply.text
    status = reply.json()
    assert (status["state"], status["drmaa2"], status["units"]["suspended"]) == ("suspended", "Suspended", 3)
    assert client.lease(2) == []
    assert client.heartbeat([grant])["commands"] == [{"action": "pause", "attempt": grant["attempt"]}]
    status = control(master.url, job, "resume").json()
    assert (status["state"], status["drmaa2"], status["units"]["running"]) == ("running", "Running", 1)
    paused = [grant | {"state": "paused"}]
    beat = client.call("/clients/heartbeat", {"slots": 2, "busy": 1, "containers": [_container(g) for g in paused]})
    assert beat["commands"] == [{"action": "resume", "attempt": grant["attempt"]}]
    assert len(client.lease(2)) == 2


def test_hold_at_submit_then_release(master):
    hashes = [put_blob(master.url, b"x\n")]
    reply = post_job(master.url, {"job": job_file(), "chunks": hashes, "hold": True})
    assert reply.status_code == 201, reply.text
    job = reply.json()["job"]
    status = job_status(master.url, job)
    assert (status["state"], status["drmaa2"]) == ("held", "QueuedHeld")
    client = registered(master.url)
    assert client.lease(1) == []
    assert_error(control(master.url, job, "resume"), 409, "is held", "release it")
    assert control(master.url, job, "release").json()["drmaa2"] == "Queued"
    assert len(client.lease(1)) == 1
    assert_error(control(master.url, job, "hold"), 409, "has started", "suspend it instead")


def test_cancel_aborts_the_running_attempts_and_keeps_what_finished(master):
    job = create_job(master.url, job_file(), [b"a\n", b"b\n", b"c\n"])
    client = registered(master.url)
    first, second = client.lease(2)
    client.upload([client.report(first)])
    status = control(master.url, job, "cancel").json()
    assert (status["state"], status["drmaa2"], status["units"]["cancelled"], status["units"]["done"]) == (
        "cancelled", "Failed", 2, 1,
    )  # fmt: skip
    assert client.heartbeat([second])["commands"] == [{"action": "abort", "attempt": second["attempt"]}]
    (ack,) = client.upload([client.report(second)])
    assert not ack["accepted"]
    assert_error(requests.get(f"{master.url}{API}/jobs/{job}/results", headers=auth(master.url)), 409, "cancelled")
    partial = requests.get(f"{master.url}{API}/jobs/{job}/results?partial=1", headers=auth(master.url))
    assert partial.status_code == 200 and partial.content == client.output(first)
    for verb in ("resume", "suspend", "release", "hold"):
        assert_error(control(master.url, job, verb), 409, "is cancelled", "DRMAA2 Failed")
    assert control(master.url, job, "cancel").status_code == 200  # again: harmless


def test_only_the_owner_and_the_operator_control_a_job(master):
    alice, bob = master.key("scientist", "alice"), master.key("scientist", "bob")
    hashes = [put_blob(master.url, b"x\n")]
    reply = requests.post(f"{master.url}{API}/jobs", json={"job": job_file(), "chunks": hashes},
                          headers={"Authorization": f"Bearer {alice}"}, timeout=30)  # fmt: skip
    job = reply.json()["job"]
    assert_error(control(master.url, job, "suspend", bob), 404, f"no job '{job}'")
    assert control(master.url, job, "suspend", alice).json()["state"] == "suspended"
    assert control(master.url, job, "resume").json()["state"] == "running"  # the operator
    volunteer = master.key("volunteer")
    assert_error(control(master.url, job, "cancel", volunteer), 403)
    assert_error(requests.post(f"{master.url}{API}/jobs/{job}/suspend", timeout=30), 401)


def test_verbs_are_the_lifecycles_and_nothing_else(shared_master):
    url = shared_master.url
    job = create_job(url, job_file(), [b"v\n"])
    assert_error(control(url, job, "pause"), 404, "no endpoint")
    assert_error(requests.get(f"{url}{API}/jobs/{job}/suspend", headers=auth(url), timeout=30), 405)
    assert_error(control(url, "nope", "suspend"), 404, "no job 'nope'")
    assert {v.value for v in Verb} == {"suspend", "resume", "hold", "release", "cancel"}
    assert_error(post_job(url, {"job": job_file(), "chunks": [put_blob(url, b"h\n")], "hold": "yes"}), 400, "hold")


def _container(grant: dict) -> dict:
    return {"container": grant["attempt"][:12], "attempt": grant["attempt"], "unit": grant["unit"],
            "job": grant["job"], "image": grant["image"], "cpus": grant["cpus"], "memory": grant["memory"],
            "state": grant["state"]}  # fmt: skip
