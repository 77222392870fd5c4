"""Adaptive replication against a real master: volunteers with a record decide units alone,
which costs fewer results than replicating every unit; a trusted volunteer that turns to lying
is found out by a spot check, everything it voted on is decided again by others, and the job
ends with no forged result in it."""

import time
from typing import Any

import requests

from tests.masters import auth
from tests.sim import API, Fleet, SimClient, compute, create_job, digest, job_file, job_status, job_units, wait_for

LIE = b"trusted, and lying\n"
PAIR = {"replicas": 2, "quorum": 2, "max_attempts": 6}


class Sleeper(SimClient):
    """Honest until it is trusted: then it lies on every unit of the job named ``target``."""

    target = ""

    def output(self, grant: dict[str, Any]) -> bytes:
        return LIE if grant["job"] == self.target else super().output(grant)


def volunteer(master: Any, name: str, cls: type[SimClient] = SimClient) -> SimClient:
    client = cls(master.url, name=name, enroll=master.key("volunteer", name), batch=4)
    client.register()
    return client


def right(units: list[dict[str, Any]], chunks: list[bytes]) -> list[bool]:
    return [u["output"] == digest(compute("map", [chunks[u["index"]]])) for u in units]


def clients(url: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}{API}/clients", headers=auth(url), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["clients"]


def test_trusted_volunteers_decide_alone_and_a_liar_among_them_is_found_out(master_factory):
    master = master_factory("--trust-after", "5", "--spot-checks", "0.25", "--reap-interval", "0.2")
    honest = [volunteer(master, f"v{i}") for i in range(5)]
    sleeper = volunteer(master, "sleeper", Sleeper)
    fleet = [*honest, sleeper]
    record = [b"record %d\n" % i for i in range(60)]
    earned = create_job(master.url, job_file(name="record", redundancy=PAIR), record)
    with Fleet(fleet):
        wait_for(lambda: job_status(master.url, earned)["state"] == "done" or None, 60, "the record job")
    trusted = {c["name"]: c["trusted"] for c in clients(master.url)}
    assert trusted["sleeper"] and sum(trusted.values()) >= 4, trusted

    chunks = [b"unit %d\n" % i for i in range(200)]
    job = create_job(master.url, job_file(name="adaptive", redundancy={**PAIR, "adaptive": True}), chunks)
    Sleeper.target = job

    def settled() -> list[dict[str, Any]] | None:
        if job_status(master.url, job)["state"] != "done":
            return None
        units = job_units(master.url, job)
        return units if all(right(units, chunks)) else None

    with Fleet(fleet):
        wait_for(lambda: next((c for c in clients(master.url) if c["name"] == "sleeper"), {}).get("invalid"), 60,
                 "the sleeper found out")  # fmt: skip
        units = wait_for(settled, 90, "the job done again, with no forged result")
        time.sleep(1.0)  # several rounds of the reaper: nothing is reopened any more
        assert job_status(master.url, job)["state"] == "done"
    units = job_units(master.url, job)
    assert all(right(units, chunks))
    attempts = [a for u in units for a in u["attempts"]]
    sleepers = [a for a in attempts if a["client"] == sleeper.id]
    assert sleepers and all(a["validity"] in ("struck", "invalid") for a in sleepers if a["state"] == "succeeded")
    results = sum(1 for a in attempts if a["state"] == "succeeded")
    ratio = results / len(units)
    print(f"adaptive: {results} results for {len(units)} units ({ratio:.2f} a unit, against 2.00 replicated)")
    assert ratio < 1.9  # fewer results than replicating every unit, a liar's rework included
    found = next(c for c in clients(master.url) if c["name"] == "sleeper")
    assert not found["trusted"] and found["streak"] == 0
