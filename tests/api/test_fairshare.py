"""Two scientists submit at once to one real master; simulated volunteers compute. With
``--scheduler fairshare`` each owner gets an equal share of the pool (within 10%) for as long
as both have work; with ``fifo`` the first job takes it all."""

from collections import Counter

import pytest
import requests

from tests.sim import API, Fleet, SimClient, job_file, job_units, put_blob, wait_job

UNITS = 80


def submit(url: str, token: str, tag: str) -> str:
    hashes = [put_blob(url, f"{tag} {i}\n".encode()) for i in range(UNITS)]
    reply = requests.post(f"{url}{API}/jobs", json={"job": job_file(tag), "chunks": hashes},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    assert reply.status_code == 201, reply.text
    return reply.json()["job"]


def finish_times(url: str, job: str) -> list[float]:
    return sorted(a["finished_at"] for u in job_units(url, job) for a in u["attempts"] if a["state"] == "succeeded")


@pytest.mark.parametrize("scheduler", ["fairshare", "fifo"])
def test_two_owners_share_the_pool(master_factory, scheduler):
    master = master_factory("--scheduler", scheduler)
    alice, bob = master.key("scientist", "alice"), master.key("scientist", "bob")
    jobs = {"alice": submit(master.url, alice, "alice"), "bob": submit(master.url, bob, "bob")}  # alice's first
    clients = [SimClient(master.url, name=f"v{i}", batch=2, idle_wait=0.02) for i in range(4)]
    with Fleet(clients):
        for job in jobs.values():
            wait_job(master.url, job)
    # the first half of all results, while both still had work: whose were they?
    ended = sorted((t, owner) for owner, job in jobs.items() for t in finish_times(master.url, job))
    done = Counter(owner for _, owner in ended[:UNITS])
    share = done["alice"] / (done["alice"] + done["bob"])
    if scheduler == "fairshare":
        assert 0.45 <= share <= 0.55, done  # within 10% of an equal share
    else:
        assert share > 0.9, done
