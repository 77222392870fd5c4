"""The lifecycle's trust rules, as pure functions: who decides a unit alone, who is found out
or quarantined, and what striking a found-out client's votes does to a unit and its job."""

from dockercomp.protocol.jobfile import Redundancy
from dockercomp.protocol.messages import UnitKind
from dockercomp.server.lifecycle import (
    AttemptSnap,
    AttemptState,
    AttemptView,
    EventKind,
    JobCounts,
    JobState,
    JobStep,
    LeasePolicy,
    Record,
    UnitSnap,
    UnitState,
    Validity,
    decide,
    on_found_out,
    on_unit_reopened,
)

PAIR = Redundancy(replicas=2, quorum=2, max_attempts=4, adaptive=True)
POLICY = LeasePolicy(trust_after=10, spot_checks=0.25, quarantine_after=3, outlier_after=5)


def test_an_attempt_leased_alone_is_a_quorum_of_one_while_it_is_the_only_one():
    alone = AttemptView("a", AttemptState.SUCCEEDED, "h", "alice", alone=True)
    assert decide(PAIR, [alone]).state == UnitState.DONE
    assert decide(PAIR, [AttemptView("a", AttemptState.LEASED, alone=True)]).wanted == 0
    failed = AttemptView("a", AttemptState.ERRORED, voice="alice", alone=True)
    assert decide(PAIR, [failed]).wanted == 2  # replicated as its job says once it failed
    late = AttemptView("a", AttemptState.SUCCEEDED, "h", "alice", alone=True)
    other = AttemptView("b", AttemptState.LEASED, voice="bob")
    assert decide(PAIR, [late, other]).state == UnitState.RUNNING  # one vote among replicas


def test_who_decides_alone():
    trusted = POLICY.trusted(Record(valid=10, streak=10), stranger=False)
    assert trusted and not POLICY.trusted(Record(valid=10, streak=9), stranger=False)
    assert not POLICY.trusted(Record(valid=50, streak=50), stranger=True)  # a stranger's trust is cheap to farm
    assert not LeasePolicy(trust_after=0).trusted(Record(valid=50, streak=50), stranger=False)
    assert POLICY.alone(PAIR, UnitState.READY, 2, trusted, draw=lambda: 0.25)
    assert not POLICY.alone(PAIR, UnitState.READY, 2, trusted, draw=lambda: 0.24)  # a spot check
    assert not POLICY.alone(PAIR, UnitState.RUNNING, 1, trusted, draw=lambda: 0.9)  # it has a replica already
    assert not POLICY.alone(
        Redundancy(2, 2, 4), UnitState.READY, 2, trusted, draw=lambda: 0.9
    )  # its job did not allow it
    assert not POLICY.alone(Redundancy(1, 1, 3, adaptive=True), UnitState.READY, 1, trusted, draw=lambda: 0.9)  # moot
    assert not POLICY.alone(PAIR, UnitState.READY, 2, False, draw=lambda: 0.9)
    unforeseen = iter(())  # drawn only when all else holds: a draw is a system call on every lease
    assert not POLICY.alone(Redundancy(2, 2, 4), UnitState.READY, 2, trusted, draw=lambda: next(unforeseen))


def test_found_out_and_quarantined():
    assert POLICY.found_out(Record(valid=12, streak=12), Record(valid=12, invalid=1))  # trusted, then wrong
    assert not POLICY.found_out(Record(valid=5, streak=5), Record(valid=5, invalid=1))  # one slip of the untrusted
    assert POLICY.found_out(Record(valid=5, invalid=2), Record(valid=5, invalid=3))  # quarantined now
    assert POLICY.quarantined(Record(invalid=3)).startswith("quarantined: 3 of its results")
    assert POLICY.quarantined(Record(valid=4, contradicted=5)).startswith("quarantined: it failed 5 units")
    assert not POLICY.quarantined(Record(valid=5, contradicted=5))  # no more failures than valid results
    assert not POLICY.quarantined(Record(contradicted=4))


def vote(attempt: str, client: str, output: str = "x", validity: Validity | None = Validity.VALID) -> AttemptSnap:
    return AttemptSnap(attempt, client, AttemptState.SUCCEEDED, output, 1, validity=validity, account=client)


def test_striking_a_vote_keeps_a_unit_done_while_the_others_make_its_quorum():
    unit = UnitSnap("u", "j", "map", UnitState.DONE, 0, (vote("a", "liar"), vote("b", "bob"), vote("c", "carol")))
    change = on_found_out(Redundancy(3, 2, 6), unit, "liar", JobState.DONE, 5.0)
    assert change is not None and (change.state, change.events) == (UnitState.DONE, ())
    assert [(u.id, u.validity) for u in change.attempts] == [("a", Validity.STRUCK)]
    assert on_found_out(Redundancy(3, 2, 6), unit, "nobody", JobState.DONE, 5.0) is None


def test_striking_the_vote_a_quorum_rested_on_reopens_the_unit():
    unit = UnitSnap("u", "j", "map", UnitState.DONE, 0, (vote("a", "liar"), vote("b", "bob")))
    change = on_found_out(Redundancy(2, 2, 4), unit, "liar", JobState.DONE, 5.0)
    assert change is not None and change.reopened
    assert (change.state, change.wanted, change.canonical_hash) == (UnitState.READY, 1, None)
    assert [e.kind for e in change.events] == [EventKind.UNIT_REOPENED]
    suspended = on_found_out(Redundancy(2, 2, 4), unit, "liar", JobState.SUSPENDED, 5.0)
    assert suspended is not None and suspended.state == UnitState.SUSPENDED


def test_an_alone_lease_of_a_found_out_client_is_replicated():
    leased = AttemptSnap("a", "liar", AttemptState.LEASED, alone=True)
    unit = UnitSnap("u", "j", "map", UnitState.RUNNING, 0, (leased,))
    change = on_found_out(PAIR, unit, "liar", JobState.RUNNING, 5.0)
    assert change is not None and [(u.id, u.alone) for u in change.attempts] == [("a", False)]
    assert change.wanted == 1  # the second replica, now


def test_a_reopened_unit_reopens_a_done_job_and_drops_its_reduce_unit():
    unit = UnitSnap("u", "j", UnitKind.MAP, UnitState.DONE, 0, (vote("a", "liar", validity=Validity.VALID),))
    change = on_found_out(Redundancy(1, 1, 3), unit, "liar", JobState.DONE, 5.0)
    assert change is not None and change.reopened
    job = JobCounts("j", JobState.DONE, n_map=2, done_map=1, failed_map=0, has_reduce=True)
    step = on_unit_reopened(job, change, 5.0)
    assert (step.step, step.state, [e.kind for e in step.events]) == (
        JobStep.REDO, JobState.RUNNING, [EventKind.JOB_REOPENED],
    )  # fmt: skip
    running = on_unit_reopened(JobCounts("j", JobState.RUNNING, 2, 1, 0, False), change, 5.0)
    assert (running.step, running.state) == (JobStep.WAIT, None)
