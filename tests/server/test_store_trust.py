"""Trust, on every Store backend: a client with a record of valid results decides units of an
adaptive job alone (spot checks aside); found out, every vote it gave is struck and what it
helped decide is decided again by others, reopening done units and done jobs; a quarantined
client's results are not taken; failures that others contradict quarantine an outlier."""

from dataclasses import replace

from dockercomp.protocol.integrity import digest
from dockercomp.protocol.messages import HostFacts, LeaseRequest
from dockercomp.server.lifecycle import EventKind, JobState, LeasePolicy, UnitState, Validity
from dockercomp.server.store.base import Store
from tests.server.test_store_contract import (  # noqa: F401 - store is the fixture the tests run on
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
TRUST = LeasePolicy(slack=10.0, heartbeat_timeout=30.0, trust_after=2, spot_checks=0.0, outlier_after=2)
HONEST, LIE = b"honest", b"lie"


def adaptive(replicas: int = 2, quorum: int = 2, max_attempts: int = 6) -> dict[str, object]:
    return {**redundancy(replicas, quorum, max_attempts), "adaptive": True}


async def lease(s: Store, client: str, n: int, policy: LeasePolicy = TRUST, now: float = T0) -> list:
    return await s.lease(client, LeaseRequest(max_units=n, cpus=16.0), now, policy)


async def volunteers(s: Store, *names: str) -> list[str]:
    s.policy = TRUST
    return [(await register(s, name, 8, FACTS, T0)).id for name in names]


async def compute(s: Store, client: str, output: bytes = HONEST, n: int = 16, policy: LeasePolicy = TRUST) -> int:
    """Lease up to ``n`` units and answer each with ``output``; how many it got."""
    grants = await lease(s, client, n, policy)
    if grants:
        acks = await s.record_results(client, [ok(g.attempt, output) for g in grants], T0 + 1)
        assert all(a.accepted for a in acks), acks
    return len(grants)


async def earn_trust(s: Store, client: str, witness: str) -> None:
    """Two replicated units on which ``client`` and ``witness`` agree: a streak of 2."""
    await s.create_job(job_spec(name="record", redundancy=redundancy(2, 2, 4)), chunks(2, "record"), T0)
    assert await compute(s, client) == 2 and await compute(s, witness) == 2
    assert (await s.get_client(client)).streak == 2


async def canonicals(s: Store, job_id: str) -> list[str | None]:
    return [u.canonical_hash for u in await s.list_units(job_id)]


async def catch(s: Store, liar: str, *witnesses: str, units: int = 1) -> None:
    """A replicated job in which ``liar`` lies and the witnesses do not: its results are invalid."""
    job = await s.create_job(job_spec(name="check", redundancy=redundancy(3, 2, 6)), chunks(units, liar), T0)
    assert await compute(s, liar, LIE) == units
    for witness in witnesses:
        await compute(s, witness)
    assert (await s.get_job(job.id)).state == JobState.DONE


@contract
async def test_a_trusted_client_decides_units_of_an_adaptive_job_alone(b: Backend) -> None:
    s = b.store
    trusted, witness, other = await volunteers(s, "t", "w", "o")
    await earn_trust(s, trusted, witness)
    assert (await s.get_client(trusted)).to_json(0, TRUST)["trusted"]
    job = await s.create_job(job_spec(redundancy=adaptive()), chunks(3), T0)
    assert await compute(s, trusted) == 3
    assert await lease(s, other, 16) == []  # nothing left to replicate
    status = await s.get_job(job.id)
    assert status.state == JobState.DONE and await canonicals(s, job.id) == [digest(HONEST)] * 3
    for unit in await s.list_units(job.id):
        assert len(await s.list_attempts(unit.id)) == 1


@contract
async def test_spot_checks_strangers_and_jobs_that_do_not_allow_it_are_replicated(b: Backend) -> None:
    s = b.store
    trusted, witness, other = await volunteers(s, "t", "w", "o")
    stranger = (await register(s, "s", 8, FACTS, T0, account="open-s")).id
    await earn_trust(s, trusted, witness)
    await earn_trust(s, stranger, witness)
    assert not (await s.get_client(stranger)).to_json(0, TRUST)["trusted"]
    cases = (
        (trusted, {"name": "fixed", "redundancy": redundancy(2, 2, 4)}, TRUST),  # as its job says
        (trusted, {"name": "spot", "redundancy": adaptive()}, replace(TRUST, spot_checks=1.0)),  # spot-checked
        (stranger, {"name": "strange", "redundancy": adaptive()}, TRUST),
    )
    for client, fields, policy in cases:
        job = await s.create_job(job_spec(**fields), chunks(1, str(fields["name"])), T0)
        assert await compute(s, client, policy=policy) == 1
        assert (await s.get_job(job.id)).state == JobState.RUNNING  # it wants a second replica
        assert await compute(s, other) == 1
        assert (await s.get_job(job.id)).state == JobState.DONE


@contract
async def test_a_trusted_client_found_out_has_everything_it_decided_decided_again(b: Backend) -> None:
    s = b.store
    sleeper, w1, w2 = await volunteers(s, "sleeper", "w1", "w2")
    await earn_trust(s, sleeper, w1)
    job = await s.create_job(job_spec(redundancy=adaptive()), chunks(3), T0)
    assert await compute(s, sleeper, LIE) == 3  # alone, and lying
    assert (await s.get_job(job.id)).state == JobState.DONE
    assert await canonicals(s, job.id) == [digest(LIE)] * 3
    events: list = []
    s.events.subscribe(events.append)
    await catch(s, sleeper, w1, w2)  # a unit it did not decide alone gives it away
    record = await s.get_client(sleeper)
    assert (record.invalid, record.streak) == (1, 0) and not record.to_json(0, TRUST)["quarantined"]
    # every unit it voted on: the 3 it decided alone, and the 2 of its record
    assert await s.revalidate(T0 + 2) == 5
    assert await s.revalidate(T0 + 2) == 0  # done: its votes are struck
    reopened = await s.get_job(job.id)
    assert (reopened.state, reopened.done_map, reopened.finished_at) == (JobState.RUNNING, 0, None)
    assert [(u.state, u.wanted, u.canonical_hash) for u in await s.list_units(job.id)] == [("ready", 2, None)] * 3
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.UNIT_REOPENED) == 5 and kinds.count(EventKind.JOB_REOPENED) == 2
    assert await lease(s, sleeper, 16) == []  # it voted on them: they go to others
    assert await compute(s, w1) == 3  # trusted itself by now: it decides them alone (its record's have its vote)
    assert await compute(s, w2) == 2  # the sleeper's record
    assert (await s.get_job(job.id)).state == JobState.DONE
    assert await canonicals(s, job.id) == [digest(HONEST)] * 3
    attempts = await s.list_attempts((await s.list_units(job.id))[0].id)
    assert sorted(str(a.validity) for a in attempts) == ["struck", "valid"]


@contract
async def test_colluders_quarantined_have_the_units_they_decided_together_decided_again(b: Backend) -> None:
    s = b.store
    l1, l2, h1, h2 = await volunteers(s, "l1", "l2", "h1", "h2")
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 6)), chunks(2), T0)
    assert await compute(s, l1, LIE) == 2 and await compute(s, l2, LIE) == 2  # a quorum of two liars
    assert await canonicals(s, job.id) == [digest(LIE)] * 2
    for liar in (l1, l2):
        await catch(s, liar, h1, h2, units=3)
        assert (await s.get_client(liar)).to_json(0, TRUST)["quarantined"].startswith("quarantined: 3 of its")
    assert await s.revalidate(T0 + 2) == 4  # each liar's two votes
    assert [u.state for u in await s.list_units(job.id)] == ["ready", "ready"]
    late = await s.create_job(job_spec(name="late"), chunks(1, "late"), T0)
    assert await lease(s, l1, 16) == []  # quarantined: nothing, and nothing it sends is taken
    h1_grants = await lease(s, h1, 16)
    assert {g.job for g in h1_grants} == {job.id, late.id}
    assert await compute(s, h2) == 2
    acks = await s.record_results(h1, [ok(g.attempt, HONEST) for g in h1_grants], T0 + 3)
    assert all(a.accepted for a in acks)
    assert (await s.get_job(job.id)).state == JobState.DONE and await canonicals(s, job.id) == [digest(HONEST)] * 2


@contract
async def test_a_quarantined_client_s_results_are_not_taken_and_its_leases_are_released(b: Backend) -> None:
    s = b.store
    liar, h1, h2 = await volunteers(s, "liar", "h1", "h2")
    job = await s.create_job(job_spec(name="open", redundancy=redundancy(2, 2, 4)), chunks(1, "open"), T0)
    (held,) = await lease(s, liar, 1)
    await catch(s, liar, h1, h2, units=3)
    (ack,) = await s.record_results(liar, [ok(held.attempt)], T0 + 5)
    assert not ack.accepted and "quarantined" in ack.reason
    attempts = await s.list_attempts((await s.list_units(job.id))[0].id)
    assert [a.state for a in attempts if a.client == liar] == ["leased"]
    await s.revalidate(T0 + 6)  # found out when quarantined: what it holds goes to others
    attempts = await s.list_attempts((await s.list_units(job.id))[0].id)
    assert [a.state for a in attempts if a.client == liar] == ["released"]


@contract
async def test_a_reopened_map_unit_drops_the_reduce_unit_which_is_made_again(b: Backend) -> None:
    s = b.store
    sleeper, w1, w2 = await volunteers(s, "sleeper", "w1", "w2")
    await earn_trust(s, sleeper, w1)
    job = await s.create_job(job_spec(redundancy=adaptive(), reduce={"command": ["sum"]}), chunks(2), T0)
    assert await compute(s, sleeper, LIE) == 2  # the map units, alone
    assert await compute(s, sleeper, LIE) == 1  # the reduce unit, made from the lies
    assert (await s.get_job(job.id)).state == JobState.DONE
    await catch(s, sleeper, w1, w2)
    assert await s.revalidate(T0 + 2) == 5  # the map units, the reduce unit, its record's 2
    assert [u.kind for u in await s.list_units(job.id)] == ["map", "map"]  # the reduce unit is gone
    assert await compute(s, w1) == 2  # trusted by now: it decides the map units alone
    units = await s.list_units(job.id)
    assert [u.kind for u in units] == ["map", "map", "reduce"]
    assert [f.hash for f in units[2].inputs] == [digest(HONEST)] * 2  # made from the new outputs
    assert await compute(s, w2) == 3  # a replica of the reduce unit (it is not trusted), the sleeper's record
    assert await compute(s, w1) == 1  # the reduce unit's second replica
    assert (await s.get_job(job.id)).state == JobState.DONE


@contract
async def test_failures_that_others_contradict_quarantine_an_outlier(b: Backend) -> None:
    s = b.store
    flaky, honest = await volunteers(s, "flaky", "honest")
    for i in range(2):
        await s.create_job(job_spec(name=f"j{i}"), chunks(1, f"j{i}"), T0)
        (grant,) = await lease(s, flaky, 1)
        await s.record_results(flaky, [failed(grant.attempt)], T0 + 1)
        assert await compute(s, honest) == 1  # the unit others compute
    record = await s.get_client(flaky)
    assert record.contradicted == 2
    assert record.to_json(0, TRUST)["quarantined"].startswith("quarantined: it failed 2 units that others computed")
    assert await lease(s, flaky, 1) == []


@contract
async def test_a_job_that_fails_everywhere_quarantines_nobody(b: Backend) -> None:
    s = b.store
    a, c = await volunteers(s, "a", "c")
    job = await s.create_job(job_spec(redundancy=redundancy(1, 1, 2)), chunks(3), T0)
    for client in (a, c):
        grants = await lease(s, client, 16)
        await s.record_results(client, [failed(g.attempt) for g in grants], T0 + 1)
    assert (await s.get_job(job.id)).state == JobState.FAILED
    for client in (a, c):
        record = await s.get_client(client)
        assert record.contradicted == 0 and not record.to_json(0, TRUST)["quarantined"]


@contract
async def test_an_alone_lease_of_a_client_found_out_is_replicated_when_it_returns(b: Backend) -> None:
    s = b.store
    sleeper, w1, w2 = await volunteers(s, "sleeper", "w1", "w2")
    await earn_trust(s, sleeper, w1)
    job = await s.create_job(job_spec(redundancy=adaptive()), chunks(1), T0)
    (held,) = await lease(s, sleeper, 1)  # alone, still computing when it is found out
    await catch(s, sleeper, w1, w2)
    assert await s.revalidate(T0 + 2) == 3  # its unit, its record's 2
    await s.record_results(sleeper, [ok(held.attempt, LIE)], T0 + 3)
    assert (await s.get_job(job.id)).state == JobState.RUNNING  # its word alone no longer decides
    assert await compute(s, w1) == 1 and await compute(s, w2) == 3
    assert await canonicals(s, job.id) == [digest(HONEST)]
    validity = {a.client: a.validity for a in await s.list_attempts((await s.list_units(job.id))[0].id)}
    assert validity == {sleeper: Validity.INVALID, w1: Validity.VALID, w2: Validity.VALID}
    assert (await s.get_client(sleeper)).invalid == 2


@contract
async def test_a_suspended_job_s_reopened_units_stay_suspended(b: Backend) -> None:
    from dockercomp.server.lifecycle import Verb

    s = b.store
    sleeper, w1, w2 = await volunteers(s, "sleeper", "w1", "w2")
    await earn_trust(s, sleeper, w1)
    job = await s.create_job(job_spec(redundancy=adaptive()), chunks(2), T0)
    assert await compute(s, sleeper, LIE, n=1) == 1
    await s.control_job(job.id, Verb.SUSPEND, T0 + 1)
    await catch(s, sleeper, w1, w2)
    assert await s.revalidate(T0 + 2) == 3
    assert [u.state for u in await s.list_units(job.id)] == [UnitState.SUSPENDED] * 2
    assert (await s.get_job(job.id)).state == JobState.SUSPENDED
