"""Fifty simulated volunteers over real HTTP against one master: some vanish mid-lease, some
lie. The replicated job must still finish with only right canonical outputs."""

import collections

import requests

from tests.sim import Fleet, SimClient, compute, create_job, digest, job_file, job_units, wait_job

HONEST, LIARS, VANISHERS = 41, 4, 5
UNITS = 60


def test_fifty_clients_finish_a_replicated_job_with_only_right_outputs(master_factory):
    master = master_factory("--heartbeat-timeout", "1.5", "--reap-interval", "0.2")
    chunks = [b"record %03d: the quick brown fox\n" % i for i in range(UNITS)]
    redundancy = {"replicas": 2, "quorum": 2, "max_attempts": 8}
    job = create_job(master.url, job_file("simulation", redundancy=redundancy), chunks)

    modes = ["vanisher"] * VANISHERS + ["liar"] * LIARS + ["honest"] * HONEST
    clients = [
        SimClient(master.url, name=f"{mode}-{i:02d}", mode=mode, batch=2, heartbeat_every=0.4, idle_wait=0.2)
        for i, mode in enumerate(modes)
    ]
    with Fleet(clients):
        status = wait_job(master.url, job, timeout=90)
    assert status["state"] == "done", status
    assert status["units"]["done"] == UNITS

    # every canonical output is the right one, and so is the job's result
    units = job_units(master.url, job)
    assert [u["output"] for u in units] == [digest(compute("map", [c])) for c in chunks]
    result = requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers)
    assert result.content == b"".join(compute("map", [c]) for c in chunks)

    # replicas went to distinct clients (released attempts aside); valid results came from honest ones only
    mode_of = {c.id: c.mode for c in clients}
    attempts = [(u["id"], a) for u in units for a in u["attempts"]]
    per_unit_client = collections.Counter((unit, a["client"]) for unit, a in attempts if a["state"] != "released")
    assert max(per_unit_client.values()) == 1
    assert {mode_of[a["client"]] for _, a in attempts if a["validity"] == "valid"} == {"honest"}
    assert {mode_of[a["client"]] for _, a in attempts if a["validity"] == "invalid"} == {"liar"}
    vanished = [a for _, a in attempts if mode_of[a["client"]] == "vanisher"]
    assert "timed_out" in {a["state"] for a in vanished} <= {"timed_out", "released"}
    assert all(c.vanished for c in clients if c.mode == "vanisher")

    # the quorum found the liars out: their reliability fell below every honest client's
    listed = {c["id"]: c for c in requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"]}
    honest = [listed[c.id] for c in clients if c.mode == "honest"]
    liars = [listed[c.id] for c in clients if c.mode == "liar"]
    assert all(c["invalid"] == 0 and c["reliability"] == 1.0 for c in honest)
    assert sum(c["invalid"] for c in liars) > 0
    caught = [c for c in liars if c["invalid"]]
    assert max(c["reliability"] for c in caught) < min(c["reliability"] for c in honest)
    assert all(c["valid"] == 0 for c in liars)
    assert sum(c["valid"] for c in honest) >= 2 * UNITS
