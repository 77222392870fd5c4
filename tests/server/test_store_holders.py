"""Who may hold a unit's replicas, on every Store backend: distinct accounts and networks (a
Sybil's many clients are one voice), the lease cap of each client, and quarantine."""

from dockercomp.protocol.messages import HostFacts, LeaseRequest
from dockercomp.server.lifecycle import LeasePolicy
from dockercomp.server.store.base import Store
from tests.server.test_store_contract import (  # noqa: F401 - store is the fixture the tests run on
    POLICY,
    T0,
    Backend,
    chunks,
    contract,
    failed,
    job_spec,
    ok,
    redundancy,
    register,
    store,
)

FACTS = HostFacts(cores=8)


async def lease(s: Store, client: str, n: int, network: str = "", policy: LeasePolicy = POLICY) -> list:
    return await s.lease(client, LeaseRequest(max_units=n, cpus=16.0), T0, policy, network)


@contract
async def test_two_clients_of_one_account_hold_one_replica(b: Backend) -> None:
    s = b.store
    mine, also_mine = [(await register(s, n, 8, FACTS, T0, account="mallory")).id for n in ("m1", "m2")]
    other = (await register(s, "o", 8, FACTS, T0, account="olivia")).id
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 4)), chunks(1), T0)
    (first,) = await lease(s, mine, 1)
    assert await lease(s, also_mine, 1) == []  # the same volunteer: no second replica
    (second,) = await lease(s, other, 1)
    await s.record_results(mine, [ok(first.attempt, b"forged")], T0 + 1)
    await s.record_results(other, [ok(second.attempt, b"honest")], T0 + 1)
    assert (await s.get_job(job.id)).state == "running"  # no quorum: a third opinion is wanted


@contract
async def test_a_unit_goes_to_distinct_networks_and_loopback_clients_are_distinct(b: Backend) -> None:
    s = b.store
    a, c, d = [(await register(s, n, 8, FACTS, T0, account=f"open-{n}")).id for n in "acd"]
    await s.create_job(job_spec(redundancy=redundancy(3, 2, 6)), chunks(1), T0)
    assert len(await lease(s, a, 1, "203.0.113.7")) == 1
    assert await lease(s, c, 1, "203.0.113.7") == []
    assert len(await lease(s, c, 1, "198.51.100.9")) == 1  # the same client, from elsewhere
    assert len(await lease(s, d, 1, "")) == 1  # the master's own machine


@contract
async def test_a_client_holds_at_most_its_slots_times_prefetch(b: Backend) -> None:
    s = b.store
    small = (await register(s, "small", 1, FACTS, T0)).id
    await s.create_job(job_spec(), chunks(10), T0)
    first, _ = await lease(s, small, 10)  # 1 slot, prefetch 2: two leases at most
    assert await lease(s, small, 10) == []
    (ack,) = await s.release(small, [first.attempt], T0)
    assert ack.accepted and len(await lease(s, small, 10)) == 1


@contract
async def test_a_client_with_too_many_invalid_results_is_quarantined(b: Backend) -> None:
    s = b.store
    liar = (await register(s, "liar", 8, FACTS, T0)).id
    honest = [(await register(s, f"h{i}", 8, FACTS, T0)).id for i in range(2)]
    await s.create_job(job_spec(redundancy=redundancy(3, 2, 6)), chunks(3), T0)
    policy = LeasePolicy(slack=10.0, heartbeat_timeout=30.0, quarantine_after=2)
    lies = await lease(s, liar, 3, policy=policy)
    await s.record_results(liar, [ok(g.attempt, b"lie") for g in lies], T0 + 1)  # first, all the same
    for client in honest:
        grants = await lease(s, client, 3, policy=policy)
        await s.record_results(client, [ok(g.attempt) for g in grants], T0 + 2)
    record = await s.get_client(liar)
    assert record.invalid == 3
    assert policy.quarantined(record.record).startswith("quarantined: 3 of its results")
    await s.create_job(job_spec(), chunks(2, "more"), T0 + 3)
    assert await lease(s, liar, 2, policy=policy) == []
    assert len(await lease(s, honest[0], 2, policy=policy)) == 2
