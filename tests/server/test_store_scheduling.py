"""The schedulers on every Store backend: fifo and fairshare order, per-owner caps, and the
owners' shares the stores keep (the contract suite's fixtures; SQLite and MongoDB)."""

from collections import Counter
from dataclasses import replace

import pytest

from dockercomp.protocol.messages import HostFacts
from dockercomp.server.lifecycle import Verb
from dockercomp.server.scheduler import FairShare, Fifo, Share
from tests.server.test_store_contract import (  # noqa: F401 - store is the fixture the tests run on
    T0,
    Backend,
    chunks,
    clients,
    contract,
    job_spec,
    lease,
    ok,
    register,
    store,
)


async def owners_of(b: Backend, grants: list) -> Counter:
    jobs = {j.id: j.owner for j in await b.store.list_jobs()}
    return Counter(jobs[g.job] for g in grants)


@contract
async def test_fifo_serves_priority_then_age(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    old = await s.create_job(job_spec(), chunks(2, "old"), T0, "alice")
    await s.create_job(job_spec(), chunks(2, "new"), T0 + 1, "bob")
    urgent = await s.create_job(job_spec(priority=5), chunks(2, "urgent"), T0 + 2, "bob")
    grants = await lease(s, a, 4, T0 + 3)
    assert [g.job for g in grants] == [urgent.id, urgent.id, old.id, old.id]


@contract
async def test_fairshare_shares_one_batch_between_owners(b: Backend) -> None:
    s = b.store
    s.scheduler = FairShare()
    (a,) = await clients(s, 1)
    await s.create_job(job_spec(), chunks(10, "alice"), T0, "alice")
    await s.create_job(job_spec(), chunks(10, "bob"), T0 + 1, "bob")
    assert await owners_of(b, await lease(s, a, 8, T0 + 2)) == {"alice": 4, "bob": 4}
    shares = await s.shares()
    assert {o: sh.running for o, sh in shares.items()} == {"alice": 4, "bob": 4}


@contract
async def test_fairshare_lets_the_owner_who_used_less_go_first(b: Backend) -> None:
    s = b.store
    s.scheduler = FairShare(half_life=3600.0)
    a, c = await clients(s, 2)
    first = await s.create_job(job_spec(), chunks(4, "alice"), T0, "alice")
    grants = await lease(s, a, 4, T0 + 1)
    await s.record_results(a, [replace(ok(g.attempt), runtime=50.0) for g in grants], T0 + 2)  # alice used the pool
    assert (await s.get_job(first.id)).state == "done"
    await s.create_job(job_spec(), chunks(4, "alice2"), T0 + 3, "alice")
    await s.create_job(job_spec(), chunks(4, "bob"), T0 + 4, "bob")
    assert await owners_of(b, await lease(s, c, 1, T0 + 5)) == {"bob": 1}  # though alice's job is older
    # an hour-long half-life later still counts; many half-lives later, alice is even again
    later = T0 + 20 * 3600
    shares = await s.shares()
    assert s.scheduler.usage(shares["alice"], later) < 1e-3 < s.scheduler.usage(shares["alice"], T0 + 5)


@contract
async def test_results_refund_what_the_lease_charged(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    await s.create_job(job_spec(resources={"cpus": 2, "timeout": 100}), chunks(2), T0, "alice")
    g1, g2 = await lease(s, a, 2, T0)
    assert (await s.shares())["alice"].usage == pytest.approx(2 * 2 * 100)  # both allowances
    await s.record_results(a, [replace(ok(g1.attempt), runtime=7.0)], T0)
    await s.release(a, [g2.attempt], T0)
    share = (await s.shares())["alice"]
    assert (share.running, share.usage) == (0, pytest.approx(2 * 7.0))  # what the unit used, no more


@contract
async def test_a_cap_on_running_units_per_owner(b: Backend) -> None:
    s = b.store
    s.scheduler = Fifo(max_running=3)
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(), chunks(10, "alice"), T0, "alice")
    await s.create_job(job_spec(), chunks(10, "bob"), T0 + 1, "bob")
    assert await owners_of(b, await lease(s, a, 8, T0 + 2)) == {"alice": 3, "bob": 3}
    assert await lease(s, c, 8, T0 + 3) == []  # both at their cap
    await s.control_job(job.id, Verb.CANCEL, T0 + 4)  # alice's leases end
    assert (await s.shares())["alice"].running == 0
    assert await owners_of(b, await lease(s, c, 8, T0 + 5)) == {}  # alice has nothing left, bob is at his cap


def test_share_arithmetic():
    fair = FairShare(half_life=10.0)
    share = Share(at=0.0)
    fair.add(share, 1, 100.0, 0.0)
    assert fair.usage(share, 10.0) == pytest.approx(50.0)
    fair.add(share, -1, -100.0, 10.0)  # a refund never goes below zero
    assert (share.running, share.usage) == (0, 0.0)
    with pytest.raises(ValueError):
        FairShare(half_life=0)


@contract
async def test_a_lease_gives_only_what_fits_the_clients_gpus_disk_and_arch(b: Backend) -> None:
    s = b.store
    arm = (await register(s, "arm", 4, HostFacts(cores=4, arch="aarch64"), T0)).id
    x86 = (await register(s, "x86", 4, HostFacts(cores=4, arch="x86_64"), T0)).id
    gpu = await s.create_job(job_spec(resources={"gpus": 1}), chunks(2, "gpu"), T0)
    big = await s.create_job(job_spec(resources={"disk": "1GiB"}), chunks(1, "disk"), T0 + 1)
    amd = await s.create_job(job_spec(resources={"arch": "amd64"}), chunks(1, "amd"), T0 + 2)
    assert await lease(s, arm, 4, T0 + 3, disk=1 << 20) == []
    first = await lease(s, x86, 4, T0 + 3, gpus=1, disk=1 << 20)  # one GPU free: one unit of the gpu job
    assert [(g.job, g.gpus) for g in first] == [(gpu.id, 1), (amd.id, 0)]
    assert [g.job for g in await lease(s, x86, 4, T0 + 4, disk=2 << 30)] == [big.id]  # no GPU free now
