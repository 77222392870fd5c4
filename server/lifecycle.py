"""The unit lifecycle: every state, every allowed move, and the quorum decision, in one place.

BOINC splits this between its transitioner and validator; here it is one module of pure
functions. Stores load a unit with its attempts, ask this module what happens next, and
write the answer back as a compare-and-set. Nothing else decides a state.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from dockercomp.protocol.jobfile import Redundancy
from dockercomp.protocol.messages import ErrorKind, ResultReport

from .errors import Conflict, InvalidTransition

S = TypeVar("S", bound=StrEnum)


class JobState(StrEnum):
    RUNNING = "running"  # units are being computed (or wait for clients)
    DONE = "done"  # every unit is done, the reduce unit too when there is one
    FAILED = "failed"  # a unit failed for good; the outputs of the others stay downloadable
    CANCELLED = "cancelled"  # stopped by its owner


class UnitState(StrEnum):
    READY = "ready"  # waiting for a client: no attempt is in flight
    RUNNING = "running"  # at least one attempt is leased to a client
    DONE = "done"  # a quorum of results agreed: the unit has its canonical output
    FAILED = "failed"  # max_attempts spent without a quorum
    CANCELLED = "cancelled"  # its job was cancelled
    SUSPENDED = "suspended"  # its job is suspended: not leased until resumed


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


TERMINAL_UNIT = frozenset({UnitState.DONE, UnitState.FAILED, UnitState.CANCELLED})
# A unit may go again to a client that gave it back, or on which the unit's own workload failed
# (exit code, memory, timeout: a retry elsewhere would say the same, and a small pool must still
# reach max_attempts). After a failure of the client itself (its engine, its image, an input that
# arrived corrupt) the unit goes to other clients, so one broken volunteer cannot fail a job.
# Replicas always come from distinct clients: no client gets a unit it succeeded on or holds.
UNIT_FAILURES = frozenset({ErrorKind.EXIT_NONZERO, ErrorKind.OOM, ErrorKind.TIMEOUT})


def may_lease_again(state: AttemptState, error: str | None) -> bool:
    """Whether a client whose attempt of a unit ended so may be given that unit again."""
    return state == AttemptState.RELEASED or (state == AttemptState.ERRORED and error in UNIT_FAILURES)


MOVES: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    JobState: {
        JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED}),
        JobState.DONE: frozenset(),
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
        UnitState.SUSPENDED: frozenset({UnitState.READY, UnitState.CANCELLED}),
        UnitState.DONE: frozenset(),
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


@dataclass(frozen=True)
class AttemptView:
    """What the decision needs to know about one attempt."""

    id: str
    state: AttemptState
    output_hash: str | None = None


@dataclass(frozen=True)
class Decision:
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
    client gave the work back unstarted or unfinished). It FAILS when a quorum is out of reach.
    """
    attempts = list(attempts)
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
        return Decision(state=UnitState.FAILED, wanted=0, abandon=frozenset(in_flight))
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
        same = (report.status == "succeeded") == (attempt_state == AttemptState.SUCCEEDED) and (
            report.status != "succeeded" or report.output_hash == attempt_hash
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

REDUCE = "reduce"


def job_step(
    n_map: int, done_map: int, failed_map: int, has_reduce: bool, reduce_state: UnitState | None
) -> JobState | str | None:
    """What a job does once one of its units ends: REDUCE (create the reduce unit), a final
    JobState, or None while map units are still open."""
    if done_map + failed_map < n_map:
        return None
    if failed_map:
        return JobState.FAILED
    if not has_reduce:
        return JobState.DONE
    if reduce_state is None:
        return REDUCE
    if reduce_state == UnitState.DONE:
        return JobState.DONE
    if reduce_state in TERMINAL_UNIT:
        return JobState.FAILED
    return None


@dataclass(frozen=True)
class LeasePolicy:
    """How long a lease lives: the job's timeout plus ``slack`` for download and upload; a
    client that has not been heard from for ``heartbeat_timeout`` loses its leases sooner."""

    slack: float = 120.0
    heartbeat_timeout: float = 90.0

    def deadline(self, now: float, timeout: float) -> float:
        return now + timeout + self.slack
