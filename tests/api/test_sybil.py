"""A Sybil against a real master: many clients of one volunteer, or many strangers from one
network, hold one replica of a unit between them, so they cannot make a quorum alone."""

from tests.sim import SimClient, create_job, digest, job_file, job_status, job_units

from .helpers import registered

FORGED = b"forged\n"


def stranger(url: str, name: str, address: str) -> SimClient:
    """A client registered by open enrollment, calling from ``address`` (as the proxy in front
    of the master says: it runs with --behind-proxy)."""
    client = SimClient(url, name=name)
    client.http.headers["X-Real-Ip"] = address
    client.register()
    return client


def test_strangers_from_one_network_cannot_make_a_quorum(master_factory):
    master = master_factory("--behind-proxy")
    job = create_job(master.url, job_file(redundancy={"replicas": 2, "quorum": 2, "max_attempts": 4}), [b"x\n"])
    sybils = [stranger(master.url, f"sybil-{i}", "203.0.113.5") for i in range(5)]
    (first,) = sybils[0].lease(1)
    assert all(s.lease(1) == [] for s in sybils[1:])  # one network, one replica
    sybils[0].upload([sybils[0].report(first, FORGED)])
    honest = stranger(master.url, "honest", "198.51.100.7")
    (second,) = honest.lease(1)
    honest.upload([honest.report(second)])
    status = job_status(master.url, job)
    assert status["state"] == "running" and status["units"]["done"] == 0  # no quorum on a forgery
    third = stranger(master.url, "third", "192.0.2.44")
    (tie_break,) = third.lease(1)
    third.upload([third.report(tie_break)])
    assert job_status(master.url, job)["state"] == "done"
    (unit,) = job_units(master.url, job)
    assert unit["output"] != digest(FORGED)
    assert [a["validity"] for a in unit["attempts"]] == ["invalid", "valid", "valid"]


def test_machines_of_one_volunteer_account_hold_one_replica(master):
    create_job(master.url, job_file(redundancy={"replicas": 2, "quorum": 2, "max_attempts": 4}), [b"y\n"])
    token = master.key("volunteer", "mallory")
    machines = [registered(master.url, f"m{i}", enroll=token) for i in range(3)]
    assert len(machines[0].lease(1)) == 1
    assert all(m.lease(1) == [] for m in machines[1:])
    assert len(registered(master.url, "someone-else").lease(1)) == 1
