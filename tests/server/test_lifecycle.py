"""The lifecycle module: every move of every state machine, the quorum decision, result
judging, job steps, reliability and lease deadlines."""

import itertools
from collections import Counter
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockercomp.protocol.jobfile import Redundancy
from dockercomp.protocol.messages import Action, ErrorKind, ResultReport
from dockercomp.server.errors import Conflict, InvalidTransition
from dockercomp.server.lifecycle import (
    MOVES,
    RETRIES,
    TERMINAL_UNIT,
    VERBS,
    AttemptSnap,
    AttemptState,
    AttemptView,
    Decision,
    Drmaa2State,
    JobState,
    JobStep,
    LeasePolicy,
    UnitSnap,
    UnitState,
    Verb,
    barred,
    can_move,
    commands,
    count_into_job,
    decide,
    drmaa2_state,
    initial_wanted,
    job_step,
    judge_result,
    may_lease_again,
    on_control,
    on_expire,
    on_job_control,
    reliability,
    transition,
)

MACHINES = (JobState, UnitState, AttemptState)

# The lifecycle as DESIGN.md tells it, written out arrow by arrow, independently of MOVES.
DOCUMENTED = {
    JobState: {
        ("held", "running"),  # released
        ("held", "cancelled"),
        ("running", "held"),  # held before any unit started
        ("running", "suspended"),
        ("running", "done"),
        ("running", "failed"),
        ("running", "cancelled"),
        ("suspended", "running"),  # resumed
        ("suspended", "done"),  # a result taken just before the pause ended the last unit
        ("suspended", "failed"),
        ("suspended", "cancelled"),
        ("done", "running"),  # a unit of it reopened: a client it rested on was found out
    },
    UnitState: {
        ("ready", "running"),
        ("ready", "done"),  # a late result of a timed-out attempt decides a unit back in READY
        ("ready", "failed"),
        ("ready", "cancelled"),
        ("ready", "suspended"),
        ("running", "ready"),
        ("running", "done"),
        ("running", "failed"),
        ("running", "cancelled"),
        ("running", "suspended"),
        ("suspended", "ready"),  # resumed, nothing in flight
        ("suspended", "running"),  # resumed with its paused attempts
        ("suspended", "done"),  # a result taken while suspended decided it
        ("suspended", "failed"),
        ("suspended", "cancelled"),
        ("done", "ready"),  # reopened: a vote its quorum rested on was struck
        ("done", "suspended"),  # ... in a suspended job
    },
    AttemptState: {
        ("leased", "succeeded"),
        ("leased", "errored"),
        ("leased", "timed_out"),
        ("leased", "released"),
        ("timed_out", "succeeded"),  # a late result still counts
        ("timed_out", "errored"),
    },
}

PAIRS = [
    pytest.param(old, new, id=f"{machine.__name__}:{old.value}->{new.value}")
    for machine in MACHINES
    for old, new in itertools.product(machine, machine)
]


# -- transitions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_transition_allows_exactly_the_table(old, new):
    allowed = old == new or new in MOVES[type(old)][old]
    assert can_move(old, new) is allowed
    if allowed:
        assert transition(old, new) is new
    else:
        with pytest.raises(InvalidTransition) as info:
            transition(old, new)
        assert old.value in str(info.value) and new.value in str(info.value)
        assert type(old).__name__ in str(info.value)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_table_covers_every_state_and_stays_inside_its_machine(machine):
    assert set(MOVES[machine]) == set(machine)
    for targets in MOVES[machine].values():
        assert all(type(t) is machine for t in targets)
        assert all(t in machine for t in targets)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_table_is_the_documented_lifecycle(machine):
    table = {(old.value, new.value) for old, targets in MOVES[machine].items() for new in targets}
    assert table == DOCUMENTED[machine]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_staying_put_is_always_allowed(machine):
    for state in machine:
        assert transition(state, state) is state


def test_terminal_states_have_no_way_out_but_reopening():
    for state in (JobState.FAILED, JobState.CANCELLED, UnitState.FAILED, UnitState.CANCELLED):
        assert MOVES[type(state)][state] == frozenset()
    assert MOVES[JobState][JobState.DONE] == {JobState.RUNNING}
    assert MOVES[UnitState][UnitState.DONE] == {UnitState.READY, UnitState.SUSPENDED}
    for state in (AttemptState.SUCCEEDED, AttemptState.ERRORED, AttemptState.RELEASED):
        assert MOVES[AttemptState][state] == frozenset()
    assert {UnitState.DONE, UnitState.FAILED, UnitState.CANCELLED} == TERMINAL_UNIT


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (JobState.RUNNING, UnitState.DONE),  # "done" is a JobState value too
        (JobState.RUNNING, UnitState.RUNNING),  # equal strings, different machines
        (UnitState.RUNNING, JobState.RUNNING),
        (UnitState.READY, AttemptState.LEASED),
        (AttemptState.LEASED, UnitState.RUNNING),
    ],
)
def test_a_state_of_another_machine_is_refused(old, new):
    assert not can_move(old, new)
    with pytest.raises(InvalidTransition):
        transition(old, new)


def test_invalid_transition_is_a_conflict():
    assert InvalidTransition.status == 409


# -- decide: examples ---------------------------------------------------------------------

H1, H2, H3 = "1" * 32, "2" * 32, "3" * 32


def ok(id_, h):
    return AttemptView(id_, AttemptState.SUCCEEDED, h)


def leased(id_):
    return AttemptView(id_, AttemptState.LEASED)


def errored(id_):
    return AttemptView(id_, AttemptState.ERRORED)


def timed_out(id_):
    return AttemptView(id_, AttemptState.TIMED_OUT)


def released(id_):
    return AttemptView(id_, AttemptState.RELEASED)


def test_a_new_unit_wants_replicas_attempts():
    for replicas in (1, 2, 5):
        policy = Redundancy(replicas=replicas, quorum=1, max_attempts=replicas + 2)
        assert decide(policy, []) == Decision(UnitState.READY, wanted=replicas)
        assert initial_wanted(policy) == replicas


def test_quorum_reached_sets_canonical_valid_invalid_and_abandons_the_rest():
    policy = Redundancy(replicas=3, quorum=2, max_attempts=6)
    attempts = [ok("a", H1), ok("b", H2), errored("c"), timed_out("d"), leased("e"), ok("f", H1), leased("g")]
    d = decide(policy, attempts)
    assert d.state == UnitState.DONE
    assert d.wanted == 0
    assert d.canonical == H1
    assert d.valid == {"a", "f"}
    assert d.invalid == {"b"}
    assert d.abandon == {"e", "g"}


def test_single_replica_is_done_with_one_success():
    d = decide(Redundancy(1, 1, 3), [ok("a", H1)])
    assert (d.state, d.canonical, d.valid, d.invalid, d.abandon) == (UnitState.DONE, H1, {"a"}, frozenset(), set())


def test_decide_takes_any_iterable():
    d = decide(Redundancy(1, 1, 3), (a for a in [ok("a", H1)]))
    assert d.state == UnitState.DONE


def test_disagreement_asks_for_another_attempt():
    policy = Redundancy(replicas=2, quorum=2, max_attempts=4)
    d = decide(policy, [ok("a", H1), ok("b", H2)])
    assert d == Decision(UnitState.READY, wanted=1)
    # the third one agrees with the first: done, the second is invalid
    d = decide(policy, [ok("a", H1), ok("b", H2), ok("c", H1)])
    assert d.state == UnitState.DONE and d.valid == {"a", "c"} and d.invalid == {"b"}


def test_disagreement_with_an_attempt_in_flight_waits_for_it():
    policy = Redundancy(replicas=2, quorum=2, max_attempts=4)
    d = decide(policy, [ok("a", H1), ok("b", H2), leased("c")])
    assert d == Decision(UnitState.RUNNING, wanted=0)


@pytest.mark.parametrize("lost", [errored, timed_out], ids=["errored", "timed_out"])
def test_errors_and_timeouts_ask_for_replacements(lost):
    policy = Redundancy(replicas=1, quorum=1, max_attempts=3)
    assert decide(policy, [lost("a")]) == Decision(UnitState.READY, wanted=1)
    assert decide(policy, [lost("a"), lost("b")]) == Decision(UnitState.READY, wanted=1)
    assert decide(policy, [lost("a"), leased("b")]) == Decision(UnitState.RUNNING, wanted=0)
    policy = Redundancy(replicas=3, quorum=2, max_attempts=5)
    d = decide(policy, [ok("a", H1), lost("b"), leased("c")])
    assert d == Decision(UnitState.RUNNING, wanted=1)


def test_released_attempts_do_not_count_against_max_attempts():
    policy = Redundancy(replicas=1, quorum=1, max_attempts=2)
    many = [released(f"r{i}") for i in range(10)]
    assert decide(policy, many) == Decision(UnitState.READY, wanted=1)
    assert decide(policy, [*many, errored("e")]) == Decision(UnitState.READY, wanted=1)
    assert decide(policy, [*many, errored("e"), errored("f")]).state == UnitState.FAILED
    # released attempts are neither in flight nor results
    assert decide(policy, [*many, leased("l")]) == Decision(UnitState.RUNNING, wanted=0)


def test_errors_up_to_max_attempts_fail_the_unit():
    policy = Redundancy(replicas=1, quorum=1, max_attempts=3)
    d = decide(policy, [errored("a"), timed_out("b"), errored("c")])
    assert d == Decision(UnitState.FAILED, wanted=0)


def test_failure_when_no_hash_can_reach_quorum():
    policy = Redundancy(replicas=3, quorum=2, max_attempts=3)
    assert decide(policy, [ok("a", H1), ok("b", H2), ok("c", H3)]) == Decision(UnitState.FAILED, wanted=0)


def test_failure_abandons_attempts_in_flight():
    policy = Redundancy(replicas=3, quorum=3, max_attempts=3)
    d = decide(policy, [ok("a", H1), ok("b", H2), leased("c")])
    assert d == Decision(UnitState.FAILED, wanted=0, abandon=frozenset({"c"}))


def test_still_reachable_quorum_does_not_fail():
    # best 1 + in flight 1 + budget 0 == quorum 2: wait for the last one
    policy = Redundancy(replicas=3, quorum=2, max_attempts=3)
    d = decide(policy, [ok("a", H1), ok("b", H2), leased("c")])
    assert d == Decision(UnitState.RUNNING, wanted=0)


def test_replicas_above_quorum_keep_replicas_results_coming():
    policy = Redundancy(replicas=3, quorum=2, max_attempts=6)
    assert decide(policy, []).wanted == 3
    assert decide(policy, [leased("a")]).wanted == 2
    assert decide(policy, [ok("a", H1), leased("b"), leased("c")]).wanted == 0
    assert decide(policy, [ok("a", H1), errored("b"), leased("c")]).wanted == 1
    assert decide(policy, [ok("a", H1), errored("b"), errored("c")]).wanted == 2
    # one success is not a quorum of two, even with replicas results in
    policy = Redundancy(replicas=5, quorum=2, max_attempts=8)
    d = decide(policy, [ok("a", H1), ok("b", H2), errored("c")])
    assert d == Decision(UnitState.READY, wanted=3)


def test_wanted_never_exceeds_the_remaining_budget():
    policy = Redundancy(replicas=3, quorum=1, max_attempts=4)
    d = decide(policy, [errored("a"), errored("b"), errored("c")])
    assert d == Decision(UnitState.READY, wanted=1)
    policy = Redundancy(replicas=4, quorum=3, max_attempts=5)
    d = decide(policy, [ok("a", H1), ok("b", H1), errored("c"), errored("d")])
    assert d == Decision(UnitState.READY, wanted=1)


def test_late_success_of_a_timed_out_attempt_counts():
    policy = Redundancy(replicas=2, quorum=2, max_attempts=4)
    before = decide(policy, [ok("a", H1), timed_out("b"), leased("c")])
    assert before == Decision(UnitState.RUNNING, wanted=0)
    after = decide(policy, [ok("a", H1), ok("b", H1), leased("c")])
    assert after.state == UnitState.DONE and after.valid == {"a", "b"} and after.abandon == {"c"}


# -- decide: properties ---------------------------------------------------------------------

HASHES = ("a" * 32, "b" * 32, "c" * 32)


@st.composite
def policies(draw):
    replicas = draw(st.integers(1, 5))
    quorum = draw(st.integers(1, replicas))
    max_attempts = draw(st.integers(replicas, replicas + 5))
    return Redundancy(replicas=replicas, quorum=quorum, max_attempts=max_attempts)


@st.composite
def histories(draw):
    """A policy and any mix of attempts that never issued more than max_attempts."""
    policy = draw(policies())
    issued = draw(st.integers(0, policy.max_attempts))
    kinds = st.sampled_from([AttemptState.LEASED, AttemptState.SUCCEEDED, AttemptState.ERRORED, AttemptState.TIMED_OUT])
    states = draw(st.lists(kinds, min_size=issued, max_size=issued))
    states += [AttemptState.RELEASED] * draw(st.integers(0, 4))
    states = draw(st.permutations(states))
    attempts = [
        AttemptView(f"a{i}", s, draw(st.sampled_from(HASHES)) if s == AttemptState.SUCCEEDED else None)
        for i, s in enumerate(states)
    ]
    return policy, attempts


def check_invariants(policy, attempts, d):
    in_flight = {a.id for a in attempts if a.state == AttemptState.LEASED}
    succeeded = [a for a in attempts if a.state == AttemptState.SUCCEEDED]
    issued = sum(1 for a in attempts if a.state != AttemptState.RELEASED)
    votes = Counter(a.output_hash for a in succeeded)
    best = max(votes.values(), default=0)
    budget = policy.max_attempts - issued
    voices = {a.voice or a.id for a in attempts if a.state != AttemptState.RELEASED}
    heard = len(voices) >= min(2, policy.max_attempts)  # enough voices to fail it

    assert d.wanted >= 0
    assert issued + d.wanted <= policy.max_attempts or (not heard and d.wanted == 1)
    assert (d.state == UnitState.DONE) == (best >= policy.quorum)
    if d.state == UnitState.DONE:
        assert votes[d.canonical] >= policy.quorum
        assert d.valid == {a.id for a in succeeded if a.output_hash == d.canonical}
        assert d.invalid == {a.id for a in succeeded} - d.valid
        assert d.abandon == in_flight
        assert d.wanted == 0
        return
    assert d.canonical is None and not d.valid and not d.invalid
    reachable = best + len(in_flight) + budget >= policy.quorum
    assert (d.state == UnitState.FAILED) == (not reachable and heard)
    if d.state == UnitState.FAILED:
        assert d.wanted == 0 and d.abandon == in_flight
        return
    if not reachable:  # one voice had it: another is wanted, once nothing is in flight
        assert (d.state, d.wanted, d.abandon) == ((UnitState.RUNNING, 0, frozenset()) if in_flight
                                                  else (UnitState.READY, 1, frozenset()))  # fmt: skip
        return
    assert d.state == (UnitState.RUNNING if in_flight else UnitState.READY)
    assert not d.abandon
    # enough coming to still reach a quorum, and replicas results when the budget allows
    assert best + len(in_flight) + d.wanted >= policy.quorum
    assert len(succeeded) + len(in_flight) + d.wanted >= min(policy.replicas, len(succeeded) + len(in_flight) + budget)
    # but no more than that
    assert len(in_flight) + d.wanted <= max(policy.replicas - len(succeeded), policy.quorum - best, len(in_flight))
    if d.state == UnitState.READY:
        assert d.wanted >= 1  # an undecided unit with nothing in flight never stalls


@settings(max_examples=300, deadline=None)
@given(histories())
def test_decide_invariants_over_random_histories(history):
    policy, attempts = history
    check_invariants(policy, attempts, decide(policy, attempts))


@settings(max_examples=150, deadline=None)
@given(policies(), st.data())
def test_decide_drives_every_unit_to_an_end(policy, data):
    """Play the lifecycle: issue what decide wants, let attempts end in any way, repeat."""
    attempts: dict[str, AttemptView] = {}
    next_id = itertools.count()
    releases = 0
    for _ in range(200):
        d = decide(policy, attempts.values())
        check_invariants(policy, list(attempts.values()), d)
        if d.state in TERMINAL_UNIT:
            for a in d.abandon:
                attempts[a] = AttemptView(a, AttemptState.RELEASED)
            assert not any(a.state == AttemptState.LEASED for a in attempts.values())
            return
        for _ in range(d.wanted):
            a = f"a{next(next_id)}"
            attempts[a] = leased(a)
        open_ = sorted(a.id for a in attempts.values() if a.state in (AttemptState.LEASED, AttemptState.TIMED_OUT))
        assert open_, "an undecided unit must have something in flight or wanted"
        a = data.draw(st.sampled_from(open_))
        ends = ["succeeded", "errored"]
        if attempts[a].state == AttemptState.LEASED:
            ends += ["timed_out"] + (["released"] if releases < 5 else [])
        end = data.draw(st.sampled_from(ends))
        releases += end == "released"
        h = data.draw(st.sampled_from(HASHES)) if end == "succeeded" else None
        new = transition(attempts[a].state, AttemptState(end))
        attempts[a] = AttemptView(a, new, h)
    pytest.fail("the unit did not end within 200 events")


# -- judging results ---------------------------------------------------------------------------


def success(h=H1, attempt="a1"):
    return ResultReport(attempt=attempt, status="succeeded", output_hash=h)


def failure(attempt="a1"):
    return ResultReport(attempt=attempt, status="errored", error=ErrorKind.EXIT_NONZERO, exit_code=1)


@pytest.mark.parametrize("unit", [UnitState.READY, UnitState.RUNNING])
@pytest.mark.parametrize("report", [success(), failure()], ids=["succeeded", "errored"])
def test_a_new_result_is_taken(unit, report):
    assert judge_result(AttemptState.LEASED, None, unit, report) is True


@pytest.mark.parametrize("unit", [UnitState.READY, UnitState.RUNNING])
@pytest.mark.parametrize("report", [success(), failure()], ids=["succeeded", "errored"])
def test_a_late_result_of_a_timed_out_attempt_is_taken_while_undecided(unit, report):
    assert judge_result(AttemptState.TIMED_OUT, None, unit, report) is True


@pytest.mark.parametrize("unit", sorted(TERMINAL_UNIT))
def test_a_late_result_for_a_decided_unit_is_refused(unit):
    for attempt in (AttemptState.TIMED_OUT, AttemptState.LEASED):
        with pytest.raises(Conflict, match=f"already {unit}"):
            judge_result(attempt, None, unit, success())


@pytest.mark.parametrize("unit", list(UnitState))
def test_the_same_result_twice_is_a_duplicate(unit):
    # idempotent even once the unit is decided
    assert judge_result(AttemptState.SUCCEEDED, H1, unit, success(H1)) is False
    assert judge_result(AttemptState.ERRORED, None, unit, failure()) is False


@pytest.mark.parametrize(
    ("state", "stored", "report"),
    [
        (AttemptState.SUCCEEDED, H1, success(H2)),
        (AttemptState.SUCCEEDED, H1, failure()),
        (AttemptState.ERRORED, None, success(H1)),
    ],
    ids=["other-hash", "success-then-error", "error-then-success"],
)
def test_a_conflicting_repeat_is_refused(state, stored, report):
    with pytest.raises(Conflict, match="different result"):
        judge_result(state, stored, UnitState.RUNNING, report)


@pytest.mark.parametrize("unit", list(UnitState))
def test_a_result_for_a_released_attempt_is_refused(unit):
    with pytest.raises(Conflict, match="released"):
        judge_result(AttemptState.RELEASED, None, unit, success())


def test_conflicts_name_the_attempt():
    with pytest.raises(Conflict, match="xyz"):
        judge_result(AttemptState.RELEASED, None, UnitState.RUNNING, success(attempt="xyz"))
    assert Conflict.status == 409


# -- jobs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_map", "done", "failed", "has_reduce", "reduce_state", "expected"),
    [
        (3, 0, 0, False, None, JobStep.WAIT),  # nothing ended yet
        (3, 2, 0, False, None, JobStep.WAIT),  # one map still open
        (3, 1, 1, True, None, JobStep.WAIT),  # a failure waits for the open maps
        (3, 3, 0, False, None, JobStep.DONE),
        (3, 2, 1, False, None, JobStep.FAILED),
        (3, 0, 3, False, None, JobStep.FAILED),
        (3, 2, 1, True, None, JobStep.FAILED),  # no reduce over a failed map
        (3, 3, 0, True, None, JobStep.REDUCE),  # all maps done: create the reduce unit
        (3, 3, 0, True, UnitState.READY, JobStep.WAIT),
        (3, 3, 0, True, UnitState.RUNNING, JobStep.WAIT),
        (3, 3, 0, True, UnitState.SUSPENDED, JobStep.WAIT),
        (3, 3, 0, True, UnitState.DONE, JobStep.DONE),
        (3, 3, 0, True, UnitState.FAILED, JobStep.FAILED),
        (3, 3, 0, True, UnitState.CANCELLED, JobStep.FAILED),
        (0, 0, 0, False, None, JobStep.DONE),  # a job without input
        (0, 0, 0, True, None, JobStep.REDUCE),
        (1, 1, 0, False, None, JobStep.DONE),
    ],
)
def test_job_step(n_map, done, failed, has_reduce, reduce_state, expected):
    assert job_step(n_map, done, failed, has_reduce, reduce_state) is expected


def test_job_step_covers_every_reduce_state():
    for state in UnitState:
        step = job_step(2, 2, 0, True, state)
        assert step == {UnitState.DONE: JobStep.DONE}.get(
            state, JobStep.FAILED if state in TERMINAL_UNIT else JobStep.WAIT
        )


# -- reliability and leases ---------------------------------------------------------------------


def test_reliability_examples():
    assert reliability(0, 0) == 1.0
    assert reliability(0, 1) == 0.5
    assert reliability(1, 1) == pytest.approx(2 / 3)
    assert reliability(9, 0) == 1.0
    assert reliability(9, 10) == pytest.approx(0.5)


@given(st.integers(0, 10_000), st.integers(0, 10_000))
@settings(max_examples=100, deadline=None)
def test_reliability_properties(valid, invalid):
    r = reliability(valid, invalid)
    assert 0 < r <= 1
    assert (r == 1) == (invalid == 0)
    assert reliability(valid + 1, invalid) >= r  # an agreeing result never hurts
    assert reliability(valid, invalid + 1) < r  # a disagreeing one always does


def test_one_bad_result_hurts_a_new_client_most():
    assert reliability(0, 1) < reliability(10, 1) < reliability(100, 1)


def test_lease_policy():
    policy = LeasePolicy()
    assert (policy.slack, policy.heartbeat_timeout) == (120.0, 90.0)
    assert policy.deadline(1000.0, 300.0) == 1420.0
    assert LeasePolicy(slack=0).deadline(5.0, 10.0) == 15.0
    with pytest.raises(FrozenInstanceError):
        policy.slack = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("state", list(AttemptState))
@pytest.mark.parametrize("error", [None, *ErrorKind])
def test_may_lease_again_after_giving_back_or_a_failure_of_the_unit_itself(
    state: AttemptState, error: ErrorKind | None
) -> None:
    own = (ErrorKind.EXIT_NONZERO, ErrorKind.OOM, ErrorKind.TIMEOUT, ErrorKind.NO_RESULT)
    unit_failed = state == AttemptState.ERRORED and error in own
    assert may_lease_again(state, error) == (state == AttemptState.RELEASED or unit_failed)


# -- job control and the heartbeat's orders -------------------------------------------------


def test_every_verb_leads_where_the_table_allows():
    for verb, (applies, new) in VERBS.items():
        for state in applies:
            assert can_move(state, new), (verb, state, new)
    assert {s for applies, _ in VERBS.values() for s in applies} <= set(JobState) - {JobState.DONE, JobState.FAILED}


@pytest.mark.parametrize("verb", list(Verb))
@pytest.mark.parametrize("state", [JobState.DONE, JobState.FAILED])
def test_no_verb_moves_an_ended_job(verb, state):
    with pytest.raises(Conflict, match=f"is {state.value} .DRMAA2"):
        on_job_control("j", state, None, {}, verb, 10.0)


def test_resume_moves_the_leases_by_the_pause_and_cancel_releases_them():
    suspend = on_job_control("j", JobState.RUNNING, None, {"running": 1}, Verb.SUSPEND, 100.0)
    assert (suspend.state, suspend.suspended_at, suspend.shift) == (JobState.SUSPENDED, 100.0, 0.0)
    again = on_job_control("j", JobState.SUSPENDED, 100.0, {"suspended": 1}, Verb.SUSPEND, 150.0)
    assert again.suspended_at == 100.0  # still since the first
    leased = AttemptSnap("a1", "c1", AttemptState.LEASED, deadline=200.0)
    unit = UnitSnap("j.0", "j", "map", UnitState.RUNNING, 0, (leased,))
    paused = on_control(unit, suspend)
    assert paused is not None and (paused.state, paused.attempts) == (UnitState.SUSPENDED, ())
    resume = on_job_control("j", JobState.SUSPENDED, 100.0, {"suspended": 1}, Verb.RESUME, 160.0)
    assert (resume.state, resume.suspended_at, resume.shift) == (JobState.RUNNING, None, 60.0)
    back = on_control(UnitSnap("j.0", "j", "map", UnitState.SUSPENDED, 0, (leased,)), resume)
    assert back is not None and back.state == UnitState.RUNNING and back.attempts[0].deadline == 260.0
    cancel = on_job_control("j", JobState.RUNNING, None, {"running": 1}, Verb.CANCEL, 170.0)
    gone = on_control(unit, cancel)
    assert gone is not None and (gone.state, gone.wanted, gone.ended) == (UnitState.CANCELLED, 0, True)
    assert gone.attempts[0].state == AttemptState.RELEASED and count_into_job(gone) is None
    assert on_control(UnitSnap("j.1", "j", "map", UnitState.DONE, 0), cancel) is None


def test_a_suspended_lease_expires_only_when_its_client_falls_silent():
    leased = AttemptSnap("a1", "c1", AttemptState.LEASED, deadline=10.0)
    unit = UnitSnap("j.0", "j", "map", UnitState.SUSPENDED, 0, (leased,))
    assert on_expire(POLICY, unit, 1000.0, frozenset()) is None
    change = on_expire(POLICY, unit, 1000.0, frozenset({"c1"}))
    assert change is not None and change.state == UnitState.SUSPENDED  # it waits for resume, not a client


def test_the_heartbeats_orders():
    mine = AttemptSnap("a1", "c1", AttemptState.LEASED)
    found = {
        "run": (mine, UnitState.RUNNING),
        "susp": (AttemptSnap("susp", "c1", AttemptState.LEASED), UnitState.SUSPENDED),
        "gone": (AttemptSnap("gone", "c1", AttemptState.RELEASED), UnitState.CANCELLED),
    }
    running = {"run": True, "susp": False, "gone": False, "ghost": False}
    assert commands("c1", running, found) == [
        (Action.RESUME, "run"), (Action.PAUSE, "susp"), (Action.ABORT, "gone"), (Action.ABORT, "ghost"),
    ]  # fmt: skip
    assert commands("c1", running, found, volunteer_paused=True)[0] == (Action.PAUSE, "susp")


def test_drmaa2_states():
    assert drmaa2_state(JobState.RUNNING, {"ready": 3}) == Drmaa2State.QUEUED
    assert drmaa2_state(JobState.RUNNING, {"ready": 2, "done": 1}) == Drmaa2State.RUNNING
    assert drmaa2_state(JobState.HELD, {"suspended": 3}) == Drmaa2State.QUEUED_HELD
    assert drmaa2_state(JobState.SUSPENDED, {}) == Drmaa2State.SUSPENDED
    assert drmaa2_state(JobState.CANCELLED, {}) == Drmaa2State.FAILED
    assert drmaa2_state(JobState.DONE, {}) == Drmaa2State.DONE


POLICY = Redundancy(replicas=1, quorum=1, max_attempts=3)


def test_one_voice_cannot_fail_a_unit():
    policy = Redundancy(replicas=1, quorum=1, max_attempts=2)
    alone = [AttemptView(f"a{i}", AttemptState.ERRORED, voice="mallory") for i in range(5)]
    assert decide(policy, alone) == Decision(UnitState.READY, wanted=1)  # not failed by one volunteer
    assert decide(policy, [*alone, AttemptView("b", AttemptState.LEASED, voice="bob")]).wanted == 0
    two = [*alone, AttemptView("b", AttemptState.TIMED_OUT, voice="bob")]
    assert decide(policy, two).state == UnitState.FAILED
    once = Redundancy(replicas=1, quorum=1, max_attempts=1)
    assert decide(once, alone[:1]).state == UnitState.FAILED  # a unit of one attempt: its one voice


def test_a_holder_is_barred_after_retries_or_any_failure_of_its_own():
    assert not barred([(AttemptState.ERRORED, ErrorKind.EXIT_NONZERO), (AttemptState.RELEASED, None)])
    assert barred([(AttemptState.ERRORED, ErrorKind.EXIT_NONZERO)] * RETRIES)
    assert barred([(AttemptState.ERRORED, ErrorKind.DOCKER_UNAVAILABLE)])
    assert barred([(AttemptState.SUCCEEDED, None)]) and barred([(AttemptState.LEASED, None)])
    assert AttemptSnap("a", "c1", AttemptState.LEASED, network="203.0.113.5").voice == "203.0.113.5"
    assert AttemptSnap("a", "c1", AttemptState.LEASED, account="alice", network="n").voice == "alice"
