"""Two master processes on one SQLite file work as one: a client may talk to either, and the
store alone decides who gets which unit."""

import collections
import itertools
import sqlite3

import requests

from tests.sim import Fleet, SimClient, compute, create_job, digest, job_file, job_status, job_units, wait_job

from .helpers import registered

UNITS = 40


def test_two_masters_on_one_sqlite_file_finish_a_replicated_job(master_factory, tmp_path):
    db = tmp_path / "shared" / "dockercomp.db"
    flags = ("--store", f"sqlite:///{db}", "--heartbeat-timeout", "1.5", "--reap-interval", "0.2")
    a = master_factory(*flags, data_dir=tmp_path / "a")
    b = master_factory(*flags, data_dir=tmp_path / "b", token=a.token)  # the operator a made, in the store
    assert a.port != b.port

    # what one master is told, the other knows: jobs, blobs, client tokens
    chunks = [b"shared line %02d\n" % i for i in range(UNITS)]
    job = create_job(a.url, job_file("two-masters", redundancy={"replicas": 2, "quorum": 2, "max_attempts": 6}), chunks)
    assert job_status(b.url, job)["units"]["ready"] == UNITS
    assert requests.get(f"{b.api}/blobs/{digest(chunks[0])}", headers=b.headers).content == chunks[0]
    probe = registered(a.url, "probe")
    probe.urls = itertools.repeat(b.url)
    assert probe.heartbeat()["commands"] == []

    # clients on A, on B, and on both in turn; two of them vanish holding leases
    clients = [SimClient(a.url, name=f"a-{i}", idle_wait=0.1) for i in range(4)]
    clients += [SimClient(b.url, name=f"b-{i}", idle_wait=0.1) for i in range(4)]
    clients += [SimClient([a.url, b.url], name=f"ab-{i}", idle_wait=0.1) for i in range(4)]
    clients += [SimClient(a.url, name="gone-a", mode="vanisher"), SimClient(b.url, name="gone-b", mode="vanisher")]
    with Fleet(clients):
        status = wait_job(b.url, job, timeout=90)
    assert status["state"] == "done", status
    assert job_status(a.url, job) == status

    units = job_units(a.url, job)
    assert [u["output"] for u in units] == [digest(compute("map", [c])) for c in chunks]
    expected = b"".join(compute("map", [c]) for c in chunks)
    assert requests.get(f"{a.api}/jobs/{job}/results", headers=a.headers).content == expected
    assert requests.get(f"{b.api}/jobs/{job}/results", headers=b.headers).content == expected

    # never two live (not released) attempts of one unit for one client, as the masters report it and in the file
    per_unit_client = collections.Counter(
        (u["id"], t["client"]) for u in units for t in u["attempts"] if t["state"] != "released"
    )
    assert max(per_unit_client.values()) == 1
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        twice = conn.execute(
            "SELECT unit_id, client_id, COUNT(*) FROM attempts WHERE state <> 'released'"
            " GROUP BY unit_id, client_id HAVING COUNT(*) > 1"
        ).fetchall()
        states = dict(conn.execute("SELECT state, COUNT(*) FROM attempts GROUP BY state").fetchall())
    assert twice == []
    assert states.get("timed_out", 0) >= 1  # the vanished clients' leases were reaped and reissued
    served = {c.name: len(c.leased) for c in clients if c.mode == "honest"}
    assert sum(n for name, n in served.items() if name.startswith("a-")) > 0
    assert sum(n for name, n in served.items() if name.startswith("b-")) > 0
