"""Job control on every Store backend: suspend, resume, hold, release, cancel (the contract
suite's fixtures and helpers; each test runs on SQLite and on MongoDB)."""

import pytest

from dockercomp.protocol.messages import Action, ContainerInfo, Heartbeat
from dockercomp.server.errors import Conflict, NotFound
from dockercomp.server.lifecycle import AttemptState, EventKind, JobState, UnitState, Verb
from dockercomp.server.store.base import Store
from tests.server.test_store_contract import (  # noqa: F401 - store is the fixture the tests run on
    POLICY,
    T0,
    Backend,
    chunks,
    clients,
    contract,
    job_spec,
    lease,
    ok,
    redundancy,
    store,
    unit_of,
)


def beat(job: str, *attempts: str, paused: tuple[str, ...] = (), volunteer_paused: bool = False) -> Heartbeat:
    containers = [
        ContainerInfo(f"c{i:011d}", a, "u", job, "img", 1.0, 1 << 20, "paused" if a in paused else "running")
        for i, a in enumerate(attempts)
    ]
    return Heartbeat(slots=4, busy=len(containers), containers=containers, paused=volunteer_paused)


async def states(s: Store, job_id: str) -> dict[str, int]:
    return {k: v for k, v in (await s.unit_counts(job_id)).items() if v}


@contract
async def test_suspend_stops_leases_pauses_and_holds_the_deadlines(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    job = await s.create_job(job_spec(), chunks(3), T0)
    (g,) = await lease(s, a, 1)
    suspended = await s.control_job(job.id, Verb.SUSPEND, T0 + 5)
    assert (suspended.state, suspended.suspended_at) == (JobState.SUSPENDED, T0 + 5)
    assert await states(s, job.id) == {"suspended": 3}
    assert await lease(s, a, 3, T0 + 6) == []
    assert await s.heartbeat(a, beat(job.id, g.attempt), T0 + 7) == [(Action.PAUSE, g.attempt)]
    # a client that falls silent still loses its lease (its containers are gone with it)
    assert await s.expire(T0 + 7 + POLICY.heartbeat_timeout + 1, POLICY) == 1
    assert (await s.list_attempts(g.unit))[0].state == AttemptState.TIMED_OUT
    assert await states(s, job.id) == {"suspended": 3}


@contract
async def test_a_suspended_lease_outlives_its_deadline_and_resume_moves_it(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    job = await s.create_job(job_spec(), chunks(2), T0)
    (g,) = await lease(s, a, 1)
    await s.control_job(job.id, Verb.SUSPEND, T0 + 5)
    pause = g.deadline - T0 + 50  # longer than the lease had to live
    for t in range(10, int(pause), 20):  # the client keeps beating while paused
        await s.heartbeat(a, beat(job.id, g.attempt, paused=(g.attempt,)), T0 + t)
        assert await s.expire(T0 + t, POLICY) == 0
    await s.heartbeat(a, beat(job.id, g.attempt, paused=(g.attempt,)), T0 + pause)
    resumed = await s.control_job(job.id, Verb.RESUME, T0 + pause)
    assert (resumed.state, resumed.suspended_at) == (JobState.RUNNING, None)
    (attempt,) = await s.list_attempts(g.unit)
    assert attempt.state == AttemptState.LEASED
    assert attempt.deadline == pytest.approx(g.deadline + pause - 5)
    assert await states(s, job.id) == {"running": 1, "ready": 1}
    orders = await s.heartbeat(a, beat(job.id, g.attempt, paused=(g.attempt,)), T0 + pause + 1)
    assert orders == [(Action.RESUME, g.attempt)]
    # a volunteer who paused the whole client is not overruled
    assert await s.heartbeat(a, beat(job.id, g.attempt, paused=(g.attempt,), volunteer_paused=True), T0 + pause) == []
    (other,) = await lease(s, a, 2, T0 + pause + 2)
    await s.record_results(a, [ok(g.attempt), ok(other.attempt)], T0 + pause + 3)
    assert (await s.get_job(job.id)).state == JobState.DONE


@contract
async def test_a_result_taken_while_suspended_counts_and_may_end_the_job(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(reduce={"command": ["sum"]}), chunks(2), T0)
    first, second = await lease(s, a, 2)
    await s.record_results(a, [ok(first.attempt)], T0 + 1)
    await s.control_job(job.id, Verb.SUSPEND, T0 + 2)
    assert await states(s, job.id) == {"done": 1, "suspended": 1}
    (ack,) = await s.record_results(a, [ok(second.attempt)], T0 + 3)  # uploaded just before the pause
    assert ack.accepted
    assert (await unit_of(s, job.id, 1)).state == UnitState.DONE
    reduce = await unit_of(s, job.id, 2)
    assert reduce.state == UnitState.SUSPENDED  # made while suspended: it waits too
    assert await lease(s, c, 1, T0 + 4) == []
    await s.control_job(job.id, Verb.RESUME, T0 + 5)
    (g,) = await lease(s, c, 1, T0 + 6)
    assert g.unit == reduce.id
    await s.record_results(c, [ok(g.attempt)], T0 + 7)
    assert (await s.get_job(job.id)).state == JobState.DONE


@contract
async def test_hold_at_submit_and_release(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    job = await s.create_job(job_spec(), chunks(2), T0, held=True)
    assert (await s.get_job(job.id)).state == JobState.HELD
    assert await states(s, job.id) == {"suspended": 2}
    assert await lease(s, a, 2, T0 + 1) == []
    with pytest.raises(Conflict, match=r"held.*release it"):
        await s.control_job(job.id, Verb.RESUME, T0 + 2)
    released = await s.control_job(job.id, Verb.RELEASE, T0 + 3)
    assert released.state == JobState.RUNNING
    assert len(await lease(s, a, 2, T0 + 4)) == 2


@contract
async def test_only_a_queued_job_can_be_held(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    queued = await s.create_job(job_spec(), chunks(2), T0)
    assert (await s.control_job(queued.id, Verb.HOLD, T0 + 1)).state == JobState.HELD
    assert (await s.control_job(queued.id, Verb.HOLD, T0 + 2)).state == JobState.HELD  # again: harmless
    await s.control_job(queued.id, Verb.RELEASE, T0 + 3)
    await lease(s, a, 1, T0 + 4)
    with pytest.raises(Conflict, match=r"has started.*suspend it instead"):
        await s.control_job(queued.id, Verb.HOLD, T0 + 5)
    with pytest.raises(NotFound):
        await s.control_job("nope", Verb.HOLD, T0 + 5)


@contract
async def test_cancel_releases_leases_keeps_what_finished_and_refuses_late_results(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(redundancy=redundancy(1, 1, 3)), chunks(4), T0)
    done, running, timed_out = await lease(s, a, 3)
    await s.record_results(a, [ok(done.attempt, b"kept")], T0 + 1)
    await s.control_job(job.id, Verb.SUSPEND, T0 + 2)  # cancel works on a suspended job too
    cancelled = await s.control_job(job.id, Verb.CANCEL, T0 + 3)
    assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, T0 + 3)
    assert (cancelled.done_map, cancelled.failed_map) == (1, 0)  # cancelled units are not failures
    assert await states(s, job.id) == {"done": 1, "cancelled": 3}
    assert (await s.list_attempts(running.unit))[0].state == AttemptState.RELEASED
    orders = await s.heartbeat(a, beat(job.id, running.attempt, timed_out.attempt), T0 + 4)
    assert orders == [(Action.ABORT, running.attempt), (Action.ABORT, timed_out.attempt)]
    (late,) = await s.record_results(a, [ok(running.attempt)], T0 + 5)
    assert not late.accepted
    assert await lease(s, c, 4, T0 + 6) == []
    assert (await unit_of(s, job.id, 0)).canonical_hash is not None
    assert (await s.control_job(job.id, Verb.CANCEL, T0 + 7)).finished_at == T0 + 3  # again: harmless
    for verb, past in ((Verb.RESUME, "resumed"), (Verb.SUSPEND, "suspended"), (Verb.RELEASE, "released"),
                       (Verb.HOLD, "held")):  # fmt: skip
        with pytest.raises(Conflict, match=rf"is cancelled \(DRMAA2 Failed\): it cannot be {past}$"):
            await s.control_job(job.id, verb, T0 + 8)


@contract
async def test_a_finished_job_cannot_be_controlled(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    job = await s.create_job(job_spec(), chunks(1), T0)
    (g,) = await lease(s, a, 1)
    await s.record_results(a, [ok(g.attempt)], T0 + 1)
    for verb in Verb:
        with pytest.raises(Conflict, match=r"is done \(DRMAA2 Done\)"):
            await s.control_job(job.id, verb, T0 + 2)


@contract
async def test_control_publishes_its_events(b: Backend) -> None:
    s = b.store
    seen: list[tuple[EventKind, str]] = []
    s.events.subscribe(lambda e: seen.append((e.kind, e.detail)))
    job = await s.create_job(job_spec(), chunks(1), T0)
    await s.control_job(job.id, Verb.SUSPEND, T0 + 1)
    await s.control_job(job.id, Verb.CANCEL, T0 + 2)
    assert seen == [
        (EventKind.JOB_CONTROLLED, "suspend"),
        (EventKind.JOB_CONTROLLED, "cancel"),
        (EventKind.JOB_ENDED, "cancelled"),
    ]
