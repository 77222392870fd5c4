"""The unit lifecycle: every state, every allowed move, and the quorum decision, in one place.

BOINC splits this between its transitioner and validator; here it is one module of pure
functions. A store loads a unit with its attempts (a ``UnitSnap``), hands it to one of the
``on_*`` functions below with the event (a lease, a result, a release, an expiry), and writes
the ``UnitChange`` it gets back as one compare-and-set on the unit's state; when the change
ends the unit, ``on_unit_ended`` says what follows for its job. The changes name the events
that happened (server/events.py hands them to logs and counters). Nothing else decides a state.

The values passed back and forth are named tuples: immutable like frozen dataclasses, and
three times cheaper to make, which counts on the master's hot path (a dozen per unit).
"""

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, TypeVar

from dockercomp.protocol.jobfile import Redundancy
from dockercomp.protocol.messages import Action, ErrorKind, ResultReport, ResultStatus, UnitKind

from .errors import Conflict, InvalidTransition, NotFound

S = TypeVar("S", bound=StrEnum)


class JobState(StrEnum):
    HELD = "held"  # submitted on hold: starts no unit until released
    RUNNING = "running"  # units are being computed (or wait for clients)
    SUSPENDED = "suspended"  # no leases; the containers of its running units are paused
    DONE = "done"  # every unit is done, the reduce unit too when there is one
    FAILED = "failed"  # a unit failed for good; the outputs of the others stay downloadable
    CANCELLED = "cancelled"  # stopped by its owner or the operator; what finished stays downloadable


class UnitState(StrEnum):
    READY = "ready"  # waiting for a client: no attempt is in flight
    RUNNING = "running"  # at least one attempt is leased to a client
    DONE = "done"  # a quorum of results agreed: the unit has its canonical output
    FAILED = "failed"  # max_attempts spent without a quorum
    CANCELLED = "cancelled"  # its job was cancelled
    SUSPENDED = "suspended"  # its job is suspended or held: not leased, its leases do not expire


class AttemptState(StrEnum):
    LEASED = "leased"  # handed to a client, deadline pending
    SUCCEEDED = "succeeded"  # the client returned an output (its validity is decided by quorum)
    ERRORED = "errored"  # the client reported a failure (image, exit code, memory, timeout, ...)
    TIMED_OUT = "timed_out"  # the lease expired; a late result may still arrive and count
    RELEASED = "released"  # given back: by the client on shutdown, or by the master once the
    # unit was decided without it


class Validity(StrEnum):
    VALID = "valid"  # agreed with the canonical output
    INVALID = "invalid"  # disagreed with it: its client's reliability drops
    STRUCK = "struck"  # its client was found out since (see LeasePolicy.found_out): it counts no more


TERMINAL_UNIT = frozenset({UnitState.DONE, UnitState.FAILED, UnitState.CANCELLED})
TERMINAL_JOB = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
# A unit may go again to a client that gave it back, or on which the unit's own workload failed
# (exit code, memory, timeout, no result: a retry elsewhere would say the same, and a small pool must still
# reach max_attempts). After a failure of the client itself (its engine, its image, an input that
# arrived corrupt) the unit goes to other clients, so one broken volunteer cannot fail a job.
# Replicas always come from distinct holders (see Holder): no client gets a unit that it, another
# machine of its volunteer account, or another client on its network succeeded on or holds.
UNIT_FAILURES = frozenset({ErrorKind.EXIT_NONZERO, ErrorKind.OOM, ErrorKind.TIMEOUT, ErrorKind.NO_RESULT})
OPEN_ATTEMPT = (AttemptState.LEASED, AttemptState.TIMED_OUT)  # a result may still come


class Holder(NamedTuple):
    """Who a lease goes to, as replicas of a unit tell them apart: two attempts that share any
    of these are one voice, so a volunteer who runs many clients, or many accounts on one
    network, still holds one replica of a unit and cannot make a quorum alone."""

    client: str
    account: str = ""  # its volunteer account; "" for a stranger (open enrollment: free, so it tells nothing)
    network: str = ""  # the address it leases from (IPv6: its /64); "" on the master's own machine


def may_lease_again(state: AttemptState, error: str | None) -> bool:
    """Whether a client whose attempt of a unit ended so may be given that unit again."""
    return state == AttemptState.RELEASED or (state == AttemptState.ERRORED and error in UNIT_FAILURES)


RETRIES = 2  # attempts of one unit that one holder may see fail before it gets that unit no more


def barred(history: Iterable[tuple[AttemptState, str | None]]) -> bool:
    """Whether a holder whose attempts of a unit ended so may not be given it again: one of
    them may not be retried (may_lease_again), or RETRIES of them failed."""
    history = list(history)
    failed = sum(1 for state, _ in history if state == AttemptState.ERRORED)
    return failed >= RETRIES or not all(may_lease_again(state, error) for state, error in history)


MOVES: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    JobState: {
        JobState.HELD: frozenset({JobState.RUNNING, JobState.CANCELLED}),
        JobState.RUNNING: frozenset(
            {JobState.HELD, JobState.SUSPENDED, JobState.DONE, JobState.FAILED, JobState.CANCELLED}
        ),
        # a result taken just before the pause may still end the last unit
        JobState.SUSPENDED: frozenset({JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.CANCELLED}),
        JobState.DONE: frozenset({JobState.RUNNING}),  # a unit of it was reopened (on_unit_reopened)
        JobState.FAILED: frozenset(),
        JobState.CANCELLED: frozenset(),
    },
    UnitState: {
        # a late result of a timed-out attempt may decide a unit that is back in READY
        UnitState.READY: frozenset(
            {UnitState.RUNNING, UnitState.DONE, UnitState.FAILED, UnitState.CANCELLED, UnitState.SUSPENDED}
        ),
        UnitState.RUNNING: frozenset(
            {UnitState.READY, UnitState.DONE, UnitState.FAILED, UnitState.CANCELLED, UnitState.SUSPENDED}
        ),
        # a result taken while suspended may decide the unit
        UnitState.SUSPENDED: frozenset(
            {UnitState.READY, UnitState.RUNNING, UnitState.DONE, UnitState.FAILED, UnitState.CANCELLED}
        ),
        # reopened: a client whose vote it rested on was found out, and the others make no quorum
        UnitState.DONE: frozenset({UnitState.READY, UnitState.SUSPENDED}),
        UnitState.FAILED: frozenset(),
        UnitState.CANCELLED: frozenset(),
    },
    AttemptState: {
        AttemptState.LEASED: frozenset(
            {AttemptState.SUCCEEDED, AttemptState.ERRORED, AttemptState.TIMED_OUT, AttemptState.RELEASED}
        ),
        AttemptState.TIMED_OUT: frozenset({AttemptState.SUCCEEDED, AttemptState.ERRORED}),
        AttemptState.SUCCEEDED: frozenset(),
        AttemptState.ERRORED: frozenset(),
        AttemptState.RELEASED: frozenset(),
    },
}


def can_move(old: S, new: S) -> bool:
    """Staying in a state is always allowed; anything else must be in MOVES. The states are
    str enums, so a state of another machine with the same value would compare equal: refuse
    it by type."""
    if type(new) is not type(old):
        return False
    return old == new or new in MOVES[type(old)][old]


def transition(old: S, new: S) -> S:
    """Check one move against the table; return the new state or raise InvalidTransition."""
    if not can_move(old, new):
        raise InvalidTransition(f"{type(old).__name__} cannot move from {old} to {new}")
    return new


# -- the decision ------------------------------------------------------------------------


class AttemptView(NamedTuple):
    """What the decision needs to know about one attempt; ``voice`` is who it speaks for (its
    holder's account, else network, else client): one voice's failures count once."""

    id: str
    state: AttemptState
    output_hash: str | None = None
    voice: str = ""
    alone: bool = False  # leased to a trusted client to decide the unit alone (LeasePolicy.alone)


class Decision(NamedTuple):
    """Where a unit stands after an event, and what follows for its attempts."""

    state: UnitState
    wanted: int  # attempts to issue now, to other clients
    canonical: str | None = None  # the agreed output hash once DONE
    valid: frozenset[str] = frozenset()  # succeeded attempts that agree with it
    invalid: frozenset[str] = frozenset()  # succeeded attempts that disagree with it
    abandon: frozenset[str] = frozenset()  # leased attempts no longer needed (release them)


def decide(policy: Redundancy, attempts: Iterable[AttemptView]) -> Decision:
    """The validator and transitioner in one: from a unit's attempts, its next state.

    A unit is DONE when ``quorum`` succeeded attempts agree on the output hash. Otherwise it
    wants enough new attempts to keep ``replicas`` results coming and to still reach a
    quorum, never more than ``max_attempts`` in all (released attempts do not count: the
    client gave the work back unstarted or unfinished). It FAILS when a quorum is out of reach,
    but only once two voices have had it (one, for a unit of one attempt): one volunteer alone
    cannot fail a unit, however often it reports failing; the unit then wants one more voice.
    An attempt leased ``alone`` is a quorum of one while it is the unit's only one.
    """
    attempts = list(attempts)
    live = [a for a in attempts if a.state != AttemptState.RELEASED]
    if any(a.alone and a.state in (AttemptState.LEASED, AttemptState.SUCCEEDED) for a in live) and all(
        a.alone for a in live
    ):  # a trusted client decides it alone; once its attempt failed, the unit is replicated as usual
        policy = Redundancy(1, 1, policy.max_attempts)
    in_flight = [a.id for a in attempts if a.state == AttemptState.LEASED]
    succeeded = [a for a in attempts if a.state == AttemptState.SUCCEEDED]
    issued = sum(1 for a in attempts if a.state != AttemptState.RELEASED)
    votes = Counter(a.output_hash for a in succeeded)
    best_hash, best = votes.most_common(1)[0] if votes else (None, 0)

    if best >= policy.quorum:
        return Decision(
            state=UnitState.DONE,
            wanted=0,
            canonical=best_hash,
            valid=frozenset(a.id for a in succeeded if a.output_hash == best_hash),
            invalid=frozenset(a.id for a in succeeded if a.output_hash != best_hash),
            abandon=frozenset(in_flight),
        )
    budget = policy.max_attempts - issued
    if best + len(in_flight) + budget < policy.quorum:
        voices = {a.voice or a.id for a in attempts if a.state != AttemptState.RELEASED}
        if len(voices) >= min(2, policy.max_attempts):
            return Decision(state=UnitState.FAILED, wanted=0, abandon=frozenset(in_flight))
        return Decision(UnitState.RUNNING, 0) if in_flight else Decision(UnitState.READY, 1)
    wanted = max(policy.replicas - len(succeeded), policy.quorum - best) - len(in_flight)
    wanted = max(0, min(wanted, budget))
    return Decision(state=UnitState.RUNNING if in_flight else UnitState.READY, wanted=wanted)


def initial_wanted(policy: Redundancy) -> int:
    return policy.replicas


# -- results -------------------------------------------------------------------------------


def judge_result(
    attempt_state: AttemptState, attempt_hash: str | None, unit_state: UnitState, report: ResultReport
) -> bool:
    """Whether a result report is new (True) or a repeat of one already taken (False).

    Raise Conflict with the reason when it must be refused: the unit was already decided,
    the attempt was released, or the report contradicts what this attempt already reported.
    """
    if attempt_state in (AttemptState.SUCCEEDED, AttemptState.ERRORED):
        same = (report.status == ResultStatus.SUCCEEDED) == (attempt_state == AttemptState.SUCCEEDED) and (
            report.status != ResultStatus.SUCCEEDED or report.output_hash == attempt_hash
        )
        if same:
            return False
        raise Conflict(f"attempt {report.attempt} already reported a different result")
    if attempt_state == AttemptState.RELEASED:
        raise Conflict(f"attempt {report.attempt} was released; its result is not needed")
    if unit_state in TERMINAL_UNIT:
        raise Conflict(f"unit of attempt {report.attempt} is already {unit_state}")
    return True


def reliability(valid: int, invalid: int) -> float:
    """A client's reliability: the share of its checked results that agreed with the quorum,
    starting from 1/1 (Laplace's rule), so one bad result hurts a new client most."""
    return (valid + 1) / (valid + invalid + 1)


# -- jobs and deadlines ----------------------------------------------------------------------


class JobStep(StrEnum):
    """What a job does once one of its units has ended."""

    WAIT = "wait"  # map units are still open, or the reduce unit is
    REDUCE = "reduce"  # every map unit is done: create the reduce unit
    DONE = "done"  # every unit is done, the reduce unit too when there is one
    FAILED = "failed"  # a unit failed for good
    REDO = "redo"  # a map unit reopened: drop the reduce unit made from it; it is made again


def job_step(n_map: int, done_map: int, failed_map: int, has_reduce: bool, reduce_state: UnitState | None) -> JobStep:
    """A job's next step from its counts, once one of its units ended."""
    if done_map + failed_map < n_map:
        return JobStep.WAIT
    if failed_map:
        return JobStep.FAILED
    if not has_reduce:
        return JobStep.DONE
    if reduce_state is None:
        return JobStep.REDUCE
    if reduce_state == UnitState.DONE:
        return JobStep.DONE
    if reduce_state in TERMINAL_UNIT:
        return JobStep.FAILED
    return JobStep.WAIT


class Record(NamedTuple):
    """A client's record as its results were judged: the counters a store keeps on it."""

    valid: int = 0  # results that agreed with the quorum
    invalid: int = 0  # results that disagreed with it
    streak: int = 0  # valid results since its last invalid one
    contradicted: int = 0  # its failures (ERRORED) on units that others then computed

    def judged(self, invalid: bool) -> "Record":
        """The record after one more invalid result (which ends the streak), else one more
        failure that others contradicted."""
        if invalid:
            return Record(self.valid, self.invalid + 1, 0, self.contradicted)
        return Record(self.valid, self.invalid, self.streak, self.contradicted + 1)


@dataclass(frozen=True)
class LeasePolicy:
    """Who gets leases and how long they live: the job's timeout plus ``slack`` for download
    and upload; a client that has not been heard from for ``heartbeat_timeout`` loses its leases
    sooner. A client holds at most ``prefetch`` times its slots of leases at once.

    Trust (BOINC's adaptive replication): a client with ``trust_after`` valid results in a row
    may decide a unit of a job that allows it (``redundancy.adaptive``) alone, but for a share
    ``spot_checks`` of them, drawn at random, that are replicated as usual; one invalid result
    ends its streak. Quarantine: a client with ``quarantine_after`` invalid results, or with
    ``outlier_after`` failures contradicted by others when they outnumber its valid results,
    leases nothing (0: never)."""

    slack: float = 120.0
    heartbeat_timeout: float = 90.0
    prefetch: int = 2
    quarantine_after: int = 3
    trust_after: int = 10
    spot_checks: float = 0.1
    outlier_after: int = 10

    def deadline(self, now: float, timeout: float) -> float:
        return now + timeout + self.slack

    def room(self, slots: int, leased: int) -> int:
        """How many more units a client of ``slots`` slots that holds ``leased`` may lease."""
        return max(0, self.prefetch * slots - leased)

    def quarantined(self, record: Record) -> str:
        """Why a client with this record leases nothing, or "" when it may lease."""
        end = "it leases nothing until its key is revoked and it enrolls again"
        if self.quarantine_after and record.invalid >= self.quarantine_after:
            return (
                f"quarantined: {record.invalid} of its results disagreed with the quorum (valid {record.valid}); {end}"
            )
        if self.outlier_after and record.contradicted >= self.outlier_after and record.contradicted > record.valid:
            return (f"quarantined: it failed {record.contradicted} units that others computed, more than its "
                    f"{record.valid} valid results; {end}")  # fmt: skip
        return ""

    def trusted(self, record: Record, stranger: bool) -> bool:
        """Whether a client may decide units alone: a long enough streak of valid results, and
        an account of its own (a stranger's trust would be as cheap to farm as its enrollment)."""
        return bool(self.trust_after) and not stranger and record.streak >= self.trust_after

    def alone(
        self, redundancy: Redundancy, state: UnitState, wanted: int, trusted: bool, draw: Callable[[], float]
    ) -> bool:
        """Whether this lease decides its unit alone: a trusted client, a job that allows it, a
        unit that has no replica yet, and a ``draw()`` (uniform in [0, 1)) past the spot checks,
        drawn only when all else holds (a draw the master cannot foresee costs a system call)."""
        fresh = state == UnitState.READY and wanted >= redundancy.replicas > 1
        return trusted and redundancy.adaptive and fresh and draw() >= self.spot_checks

    def found_out(self, before: Record, after: Record) -> bool:
        """Whether a client whose record went from ``before`` to ``after`` is found out: a result
        of it was invalid while it was trusted, or it is quarantined now. Every vote it gave
        before is then struck and what it helped decide is decided again by others, and its
        leases, once quarantined, are released (on_found_out)."""
        trusted = bool(self.trust_after) and before.streak >= self.trust_after
        return (after.invalid > before.invalid and trusted) or bool(
            self.quarantined(after) and not self.quarantined(before)
        )


# -- events ------------------------------------------------------------------------------------


class EventKind(StrEnum):
    """What happened; each change names its events, with the ids they concern."""

    UNIT_DONE = "unit_done"  # a quorum agreed: the unit has its canonical output
    UNIT_FAILED = "unit_failed"  # max_attempts spent without a quorum
    RESULT_SUCCEEDED = "result_succeeded"  # an attempt returned an output (not yet judged)
    RESULT_INVALID = "result_invalid"  # an output disagreed with the quorum
    ATTEMPT_ERRORED = "attempt_errored"  # a client reported a failure; detail: its kind
    LEASE_EXPIRED = "lease_expired"  # past its deadline, or its client fell silent
    REDUCE_CREATED = "reduce_created"  # every map unit of a job is done
    JOB_CONTROLLED = "job_controlled"  # its owner or the operator acted on it; detail: the verb
    JOB_ENDED = "job_ended"  # detail: the job's final state
    UNIT_REOPENED = "unit_reopened"  # a client it rested on was found out; detail: the canonical hash it had
    JOB_REOPENED = "job_reopened"  # a unit of a job that was done reopened: it runs again


class Event(NamedTuple):
    kind: EventKind
    job: str
    unit: str = ""
    attempt: str = ""
    client: str = ""
    detail: str = ""
    at: float = 0.0  # when it happened (the change's time)


# -- snapshots and changes -----------------------------------------------------------------------


class AttemptSnap(NamedTuple):
    """What the lifecycle reads of one attempt."""

    id: str
    client: str
    state: AttemptState
    output_hash: str | None = None
    output_size: int | None = None
    error: str | None = None
    validity: Validity | None = None
    deadline: float = 0.0
    account: str = ""  # its holder's (Holder)
    network: str = ""
    alone: bool = False  # leased to decide the unit alone (LeasePolicy.alone)

    @property
    def voice(self) -> str:
        """Who the attempt speaks for: its holder's account, else its network, else its client."""
        return self.account or self.network or self.client


class UnitSnap(NamedTuple):
    """A unit as a store loaded it, with its attempts."""

    id: str
    job: str
    kind: str
    state: UnitState
    wanted: int
    attempts: tuple[AttemptSnap, ...] = ()

    def attempt(self, attempt_id: str, client: str) -> AttemptSnap:
        """This client's attempt, or NotFound (unknown, or another client's: it is told nothing more)."""
        found = next((a for a in self.attempts if a.id == attempt_id), None)
        if found is None or found.client != client:
            raise NotFound(f"attempt {attempt_id!r:.40} is unknown or was leased to another client")
        return found


class AttemptUpdate(NamedTuple):
    """New values for one attempt; None keeps what it has. ``result`` is the report whose
    outcome the attempt records (output hash and size only when it succeeded)."""

    id: str
    state: AttemptState | None = None
    finished_at: float | None = None
    result: ResultReport | None = None
    validity: Validity | None = None
    deadline: float | None = None
    alone: bool | None = None


class NewAttempt(NamedTuple):
    id: str
    client: str
    leased_at: float
    deadline: float
    alone: bool = False


class UnitChange(NamedTuple):
    """What one event does to a unit, for a store to write as one compare-and-set on ``old``:
    the unit's new state and counts, its attempts' updates (and a new attempt, for a lease),
    whose reliability counters move, and the events that happened."""

    unit: str
    job: str
    kind: str
    old: UnitState
    state: UnitState
    wanted: int
    canonical_hash: str | None = None
    canonical_size: int | None = None
    attempts: tuple[AttemptUpdate, ...] = ()
    lease: NewAttempt | None = None
    errors: tuple[str, ...] = ()  # clients whose error count rises by one (each once)
    valid: tuple[str, ...] = ()  # ... whose valid count rises
    invalid: tuple[str, ...] = ()  # ... whose invalid count rises
    events: tuple[Event, ...] = ()
    leases: int = 0  # how the number of its leased attempts moves (+1 a lease, -1 each that ended)
    contradicted: tuple[str, ...] = ()  # clients whose failure of it others contradicted (it is done)
    cleared: tuple[str, ...] = ()  # ... whose invalid result was found right (a valid one instead)

    @property
    def ended(self) -> bool:
        """The unit reached a terminal state with this change: its job takes a step."""
        return self.state in TERMINAL_UNIT and self.old not in TERMINAL_UNIT

    @property
    def reopened(self) -> bool:
        """The unit was done and is open again (on_found_out): its job takes it back (on_unit_reopened)."""
        return self.old == UnitState.DONE and self.state not in TERMINAL_UNIT


def on_lease(
    unit: UnitSnap, client: str, attempt_id: str, now: float, deadline: float, alone: bool = False
) -> UnitChange:
    """A new attempt of a leasable unit for this client (the store chose the unit: one that
    wants an attempt and that ``barred`` allows for this client); ``alone`` (LeasePolicy.alone):
    it is the unit's only replica unless it fails."""
    state = transition(unit.state, UnitState.RUNNING)
    return UnitChange(
        unit.id, unit.job, unit.kind, unit.state, state, 0 if alone else unit.wanted - 1,
        lease=NewAttempt(attempt_id, client, now, deadline, alone), leases=1,
    )  # fmt: skip


def on_result(policy: Redundancy, unit: UnitSnap, client: str, report: ResultReport, now: float) -> UnitChange | None:
    """A client's result for its attempt: None when it repeats one already taken; NotFound or
    Conflict (with the reason) when it must be refused (see judge_result)."""
    attempt = unit.attempt(report.attempt, client)
    if not judge_result(attempt.state, attempt.output_hash, unit.state, report):
        return None
    succeeded = report.status == ResultStatus.SUCCEEDED
    new = transition(attempt.state, AttemptState.SUCCEEDED if succeeded else AttemptState.ERRORED)
    event = (
        Event(EventKind.RESULT_SUCCEEDED, unit.job, unit.id, attempt.id, client, at=now)
        if succeeded
        else Event(EventKind.ATTEMPT_ERRORED, unit.job, unit.id, attempt.id, client, str(report.error or ""), now)
    )
    update = AttemptUpdate(attempt.id, new, now, report)
    return _settle(policy, unit, {attempt.id: update}, now, () if succeeded else (client,), (event,))


def on_release(policy: Redundancy, unit: UnitSnap, client: str, attempt_id: str, now: float) -> UnitChange | None:
    """A client gives a lease back unfinished: None when it was released already; Conflict
    when the attempt has ended otherwise."""
    attempt = unit.attempt(attempt_id, client)
    if attempt.state == AttemptState.RELEASED:
        return None
    if attempt.state != AttemptState.LEASED:
        raise Conflict(f"attempt {attempt_id} is already {attempt.state}")
    update = AttemptUpdate(attempt_id, transition(attempt.state, AttemptState.RELEASED), now)
    return _settle(policy, unit, {attempt_id: update}, now, (), ())


def on_expire(policy: Redundancy, unit: UnitSnap, now: float, silent: frozenset[str]) -> UnitChange | None:
    """Leases past their deadline, or of clients silent past the heartbeat timeout, time out;
    None when the unit has none (another master expired them first). While the unit is
    suspended its deadlines stand still (resume moves them on); a silent client still loses it."""
    late = unit.state != UnitState.SUSPENDED
    overdue = [
        a for a in unit.attempts
        if a.state == AttemptState.LEASED and ((late and a.deadline < now) or a.client in silent)
    ]  # fmt: skip
    if not overdue:
        return None
    updates = {a.id: AttemptUpdate(a.id, transition(a.state, AttemptState.TIMED_OUT), now) for a in overdue}
    events = tuple(Event(EventKind.LEASE_EXPIRED, unit.job, unit.id, a.id, a.client, at=now) for a in overdue)
    return _settle(policy, unit, updates, now, tuple(dict.fromkeys(a.client for a in overdue)), events)


def _settle(
    policy: Redundancy,
    unit: UnitSnap,
    updates: dict[str, AttemptUpdate],
    now: float,
    errors: tuple[str, ...],
    events: tuple[Event, ...],
    reopen: UnitState = UnitState.READY,
) -> UnitChange:
    """The quorum decision on the unit as the event left it, and all that follows from it:
    abandoned leases released, outputs judged valid or invalid (each once), the unit's end, or,
    for a done unit whose quorum a struck vote broke, its reopening (in state ``reopen``).
    (On the master's hot path: plain tuples and dicts here, no dataclass copies.)"""
    # each attempt as the event left it: (snapshot, state, output hash, output size); a struck
    # vote is as if it had been given back
    after = []
    for a in unit.attempts:
        update = updates.get(a.id)
        if update is None:
            after.append((a, a.state, a.output_hash, a.output_size))
        elif update.result is not None and update.result.status == ResultStatus.SUCCEEDED:
            after.append((a, update.state or a.state, update.result.output_hash, update.result.output_size))
        else:
            after.append((a, update.state or a.state, a.output_hash, a.output_size))
    struck = {
        a.id for a in unit.attempts if Validity.STRUCK in (a.validity, getattr(updates.get(a.id), "validity", None))
    }
    views = [
        AttemptView(a.id, AttemptState.RELEASED if a.id in struck else state, output, a.voice,
                    a.alone and getattr(updates.get(a.id), "alone", None) is not False)
        for a, state, output, _ in after
    ]  # fmt: skip
    decision = decide(policy, views)
    # a result decided alone was checked by no one: it earns its client no record
    unchecked = (
        {v.id for v in views if v.alone} if all(v.alone for v in views if v.state != AttemptState.RELEASED) else set()
    )
    if decision.state in TERMINAL_UNIT:
        target = decision.state
    elif unit.state == UnitState.SUSPENDED:
        target = UnitState.SUSPENDED
    else:
        target = reopen if unit.state == UnitState.DONE else decision.state
    state = transition(unit.state, target)
    out = list(events)
    extra: dict[str, dict[str, Any]] = {}  # new values for attempts the decision touches
    valid: list[str] = []
    invalid: list[str] = []
    cleared: list[str] = []
    size = None
    for a, attempt_state, _, output_size in after:
        if a.id in decision.abandon:
            extra.setdefault(a.id, {}).update(state=transition(attempt_state, AttemptState.RELEASED), finished_at=now)
        if a.id in decision.valid:
            size = output_size if size is None else size
            if a.validity is None:
                extra.setdefault(a.id, {})["validity"] = Validity.VALID
                if a.id not in unchecked:
                    valid.append(a.client)
            elif a.validity == Validity.INVALID:  # outvoted by a quorum that was struck: right after all
                extra.setdefault(a.id, {})["validity"] = Validity.VALID
                cleared.append(a.client)
        elif a.id in decision.invalid and a.validity in (None, Validity.VALID):  # valid once, on a reopened unit
            extra.setdefault(a.id, {})["validity"] = Validity.INVALID
            invalid.append(a.client)
            out.append(Event(EventKind.RESULT_INVALID, unit.job, unit.id, a.id, a.client, at=now))
    for attempt_id, values in extra.items():
        base = updates.get(attempt_id)
        updates[attempt_id] = AttemptUpdate(
            attempt_id, values.get("state", base.state if base else None),
            values.get("finished_at", base.finished_at if base else None), base.result if base else None,
            values.get("validity", base.validity if base else None), base.deadline if base else None,
            base.alone if base else None,
        )  # fmt: skip
    contradicted: tuple[str, ...] = ()
    if state != unit.state and state in (UnitState.DONE, UnitState.FAILED):
        kind = EventKind.UNIT_DONE if state == UnitState.DONE else EventKind.UNIT_FAILED
        out.append(Event(kind, unit.job, unit.id, detail=decision.canonical or "", at=now))
        if state == UnitState.DONE:
            contradicted = tuple(dict.fromkeys(a.client for a, s, _, _ in after if s == AttemptState.ERRORED))
    elif unit.state == UnitState.DONE and state != unit.state:
        out.append(Event(EventKind.UNIT_REOPENED, unit.job, unit.id, detail=unit_canonical(unit) or "", at=now))
    ended = sum(1 for a in unit.attempts if a.state == AttemptState.LEASED and a.id in updates
                and updates[a.id].state not in (None, AttemptState.LEASED))  # fmt: skip
    return UnitChange(
        unit.id, unit.job, unit.kind, unit.state, state, decision.wanted, decision.canonical, size,
        tuple(updates.values()), None, errors, tuple(valid), tuple(invalid), tuple(out), -ended, contradicted,
        tuple(cleared),
    )  # fmt: skip


def unit_canonical(unit: UnitSnap) -> str | None:
    """The output hash its valid attempts agree on (a done unit's canonical hash)."""
    return next((a.output_hash for a in unit.attempts if a.validity == Validity.VALID), None)


def on_found_out(
    policy: Redundancy, unit: UnitSnap, client: str, job: JobState, now: float, quarantined: bool = False
) -> UnitChange | None:
    """A client was found out (LeasePolicy.found_out): strike every vote it gave this unit and
    decide the unit again by the others. A done unit whose quorum they still make stays done;
    else it is reopened (in the state a new unit of its job starts in) and wants replicas from
    others (the found-out client holds one already, so it gets none). An attempt it holds to
    decide alone no longer does; a quarantined client's leases are released (its results are
    not taken any more). None: nothing to change."""
    mine = [a for a in unit.attempts if a.client == client]
    updates = {a.id: AttemptUpdate(a.id, validity=Validity.STRUCK) for a in mine
               if a.state == AttemptState.SUCCEEDED and a.validity in (None, Validity.VALID)}  # fmt: skip
    # what it still computes alone is replicated when it returns
    updates |= {a.id: AttemptUpdate(a.id, alone=False) for a in mine if a.alone and a.state in OPEN_ATTEMPT}
    if quarantined:
        updates |= {
            a.id: AttemptUpdate(a.id, AttemptState.RELEASED, now) for a in mine if a.state == AttemptState.LEASED
        }
    if not updates:
        return None
    return _settle(policy, unit, updates, now, (), (), unit_start_state(job))


# -- after a unit ended: its job -------------------------------------------------------------------


class JobCounts(NamedTuple):
    """A job as its counts stand once the ending unit was counted in."""

    id: str
    state: JobState
    n_map: int
    done_map: int
    failed_map: int
    has_reduce: bool


class JobChange(NamedTuple):
    step: JobStep
    state: JobState | None = None  # the job's final state, for DONE or FAILED
    events: tuple[Event, ...] = ()


def count_into_job(change: UnitChange) -> str | None:
    """Which of a job's counters a map unit's end moves up ("done_map" or "failed_map"), or its
    reopening down ("done_map"); None for the reduce unit, which is not counted, and for a unit
    cancelled with its job."""
    if change.kind != UnitKind.MAP or change.state == UnitState.CANCELLED:
        return None
    return "failed_map" if change.state == UnitState.FAILED else "done_map"


def on_unit_ended(job: JobCounts, change: UnitChange, now: float) -> JobChange:
    """What a job does once a unit of it ended (``job`` counted with it already). A job that
    ended already (cancelled while a result was being taken) takes no step."""
    if job.state in TERMINAL_JOB:
        return JobChange(JobStep.WAIT)
    step = job_step(job.n_map, job.done_map, job.failed_map, job.has_reduce,
                    change.state if change.kind == UnitKind.REDUCE else None)  # fmt: skip
    if step == JobStep.REDUCE:
        return JobChange(step, events=(Event(EventKind.REDUCE_CREATED, job.id, at=now),))
    if step in (JobStep.DONE, JobStep.FAILED):
        final = transition(job.state, JobState.DONE if step == JobStep.DONE else JobState.FAILED)
        return JobChange(step, final, (Event(EventKind.JOB_ENDED, job.id, detail=final.value, at=now),))
    return JobChange(step)


def on_unit_reopened(job: JobCounts, change: UnitChange, now: float) -> JobChange:
    """What a job does once a unit of it reopened (``job`` counted without it already): a done
    job runs again, its result no longer final; a reopened map unit makes the job drop its
    reduce unit (REDO), which is made again once the map units are done again."""
    step = JobStep.REDO if change.kind == UnitKind.MAP and job.has_reduce else JobStep.WAIT
    if job.state != JobState.DONE:
        return JobChange(step)
    state = transition(job.state, JobState.RUNNING)
    return JobChange(step, state, (Event(EventKind.JOB_REOPENED, job.id, change.unit, at=now),))


def on_dropped(unit: UnitSnap) -> UnitChange:
    """A reduce unit dropped (JobStep.REDO): its leases end with it (their clients are told to
    abort, as for any attempt the master no longer knows), for the store to count before it
    deletes the unit."""
    leased = sum(1 for a in unit.attempts if a.state == AttemptState.LEASED)
    return UnitChange(unit.id, unit.job, unit.kind, unit.state, unit.state, 0, leases=-leased)


class _Output(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def canonical_hash(self) -> str | None: ...


_U = TypeVar("_U", bound=_Output)


def result_units(units: Sequence[_U]) -> list[_U]:
    """The units whose canonical outputs make a job's result: its reduce unit once it has
    one, else every map unit, in order."""
    reduce = [u for u in units if u.kind == UnitKind.REDUCE]
    if reduce and reduce[0].canonical_hash:
        return reduce[:1]
    return [u for u in units if u.kind == UnitKind.MAP]


# -- the heartbeat ------------------------------------------------------------------------------


def commands(
    client: str,
    running: Mapping[str, bool],
    found: Mapping[str, tuple[AttemptSnap, UnitState]],
    volunteer_paused: bool = False,
) -> list[tuple[Action, str]]:
    """The master's orders for the attempts a client says it runs (``running``: attempt id →
    whether its containers are paused): abort unknown ones, another client's, those released
    or ended, and those whose unit was decided or cancelled without them; pause those of a
    suspended job (every beat: a client that was paused by its volunteer must keep them so
    after); resume paused ones whose job runs again, unless the volunteer paused the client."""
    orders = []
    for attempt_id, paused in running.items():
        attempt, unit_state = found.get(attempt_id, (None, None))
        if (
            attempt is None
            or attempt.client != client
            or attempt.state not in OPEN_ATTEMPT
            or unit_state in TERMINAL_UNIT
        ):
            orders.append((Action.ABORT, attempt_id))
        elif unit_state == UnitState.SUSPENDED:
            orders.append((Action.PAUSE, attempt_id))
        elif paused and not volunteer_paused:
            orders.append((Action.RESUME, attempt_id))
    return orders


# -- job control ---------------------------------------------------------------------------------


class Verb(StrEnum):
    """What a job's owner or the operator may do to it (DRMAA2's control verbs)."""

    SUSPEND = "suspend"  # lease no more; pause the containers of its running units
    RESUME = "resume"  # undo suspend: unpause, lease again; the leases' deadlines move by the pause
    HOLD = "hold"  # a job that has not started yet starts nothing until released
    RELEASE = "release"  # undo hold
    CANCEL = "cancel"  # stop and remove its running containers; what finished stays downloadable


# per verb: the job states it applies to, and the state it leads to (again is harmless: a verb
# repeated sweeps the units once more, which also completes one a failed master left half done)
VERBS: dict[Verb, tuple[frozenset[JobState], JobState]] = {
    Verb.SUSPEND: (frozenset({JobState.RUNNING, JobState.SUSPENDED}), JobState.SUSPENDED),
    Verb.RESUME: (frozenset({JobState.SUSPENDED, JobState.RUNNING}), JobState.RUNNING),
    Verb.HOLD: (frozenset({JobState.RUNNING, JobState.HELD}), JobState.HELD),
    Verb.RELEASE: (frozenset({JobState.HELD, JobState.RUNNING}), JobState.RUNNING),
    Verb.CANCEL: (frozenset({JobState.HELD, JobState.RUNNING, JobState.SUSPENDED, JobState.CANCELLED}),
                  JobState.CANCELLED),
}  # fmt: skip
_PAST = {Verb.SUSPEND: "suspended", Verb.RESUME: "resumed", Verb.HOLD: "held", Verb.RELEASE: "released",
         Verb.CANCEL: "cancelled"}  # fmt: skip
# what to do instead, when a verb does not apply to a job's state
_INSTEAD = {
    (Verb.RESUME, JobState.HELD): "release it",
    (Verb.RELEASE, JobState.SUSPENDED): "resume it",
    (Verb.HOLD, JobState.SUSPENDED): "it is suspended already; resume or cancel it",
    (Verb.SUSPEND, JobState.HELD): "it is held already; release or cancel it",
}


class Drmaa2State(StrEnum):
    """A job's state as DRMAA2 names it (for tools that speak DRMAA2)."""

    QUEUED = "Queued"  # waiting for clients: no unit has started yet
    QUEUED_HELD = "QueuedHeld"  # held
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    DONE = "Done"
    FAILED = "Failed"  # failed or cancelled


def started(counts: Mapping[str, int]) -> bool:
    """Whether a job has started, from its units per state: one runs or has ended."""
    return any(counts.get(s, 0) for s in (UnitState.RUNNING, UnitState.DONE, UnitState.FAILED))


def drmaa2_state(state: JobState, counts: Mapping[str, int]) -> Drmaa2State:
    if state == JobState.RUNNING:
        return Drmaa2State.RUNNING if started(counts) else Drmaa2State.QUEUED
    return {
        JobState.HELD: Drmaa2State.QUEUED_HELD, JobState.SUSPENDED: Drmaa2State.SUSPENDED,
        JobState.DONE: Drmaa2State.DONE,
    }.get(state, Drmaa2State.FAILED)  # fmt: skip


@dataclass(frozen=True)
class JobControl:
    """What a verb does to a job, for a store to write as a compare-and-set on the state it
    read, then to apply to each of its open units with ``on_control``."""

    job: str
    verb: Verb
    state: JobState
    suspended_at: float | None  # since when it is suspended (None: it is not)
    shift: float  # how long it was suspended (resume): its leases' deadlines move by as much
    at: float
    events: tuple[Event, ...]


def on_job_control(
    job: str, state: JobState, suspended_at: float | None, counts: Mapping[str, int], verb: Verb, now: float
) -> JobControl:
    """A verb on a job in ``state`` with these units per state; Conflict, saying the job's
    state and what to do instead, when the verb does not apply."""
    applies, new = VERBS[verb]
    if verb == Verb.HOLD and state == JobState.RUNNING and started(counts):
        raise Conflict(f"job {job} has started (DRMAA2 Running): only a queued job can be held; suspend it instead")
    if state not in applies:
        instead = _INSTEAD.get((verb, state), "")
        raise Conflict(f"job {job} is {state} (DRMAA2 {drmaa2_state(state, counts)}): it cannot be {_PAST[verb]}"
                       + (f"; {instead}" if instead else ""))  # fmt: skip
    new = transition(state, new)
    paused = suspended_at if state == JobState.SUSPENDED else None
    since = (paused or now) if new == JobState.SUSPENDED else None
    shift = now - paused if paused is not None and new == JobState.RUNNING else 0.0
    events: tuple[Event, ...] = (Event(EventKind.JOB_CONTROLLED, job, detail=verb.value, at=now),)
    if new == JobState.CANCELLED and state != new:
        events += (Event(EventKind.JOB_ENDED, job, detail=new.value, at=now),)
    return JobControl(job, verb, new, since, max(0.0, shift), now, events)


def unit_start_state(job: JobState) -> UnitState:
    """The state a new unit of a job in this state starts in (map units at submit, the reduce
    unit once the map units are done)."""
    return UnitState.SUSPENDED if job in (JobState.HELD, JobState.SUSPENDED) else UnitState.READY


def on_control(unit: UnitSnap, control: JobControl) -> UnitChange | None:
    """What a job's verb does to one of its units; None when it has nothing to do (ended, or
    already where the verb leads). Suspend and hold stop leasing it; resume and release lease
    it again, moving its leases' deadlines by the pause; cancel releases its leases (their
    clients are told to abort at their next heartbeat)."""
    if unit.state in TERMINAL_UNIT:
        return None
    leased = [a for a in unit.attempts if a.state == AttemptState.LEASED]
    if control.state in (JobState.SUSPENDED, JobState.HELD):
        if unit.state == UnitState.SUSPENDED:
            return None
        return UnitChange(unit.id, unit.job, unit.kind, unit.state, transition(unit.state, UnitState.SUSPENDED),
                          unit.wanted)  # fmt: skip
    if control.state == JobState.RUNNING:
        if unit.state != UnitState.SUSPENDED:
            return None
        state = transition(unit.state, UnitState.RUNNING if leased else UnitState.READY)
        updates = tuple(AttemptUpdate(a.id, deadline=a.deadline + control.shift) for a in leased if control.shift)
        return UnitChange(unit.id, unit.job, unit.kind, unit.state, state, unit.wanted, attempts=updates)
    state = transition(unit.state, UnitState.CANCELLED)
    updates = tuple(AttemptUpdate(a.id, transition(a.state, AttemptState.RELEASED), control.at) for a in leased)
    return UnitChange(unit.id, unit.job, unit.kind, unit.state, state, 0, attempts=updates, leases=-len(leased))
