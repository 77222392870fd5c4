"""Which job a lease serves next: the scheduler, chosen when the master starts.

- ``fifo``: the job of highest priority, then the oldest (what a queue does).
- ``fairshare``: the owner who used the pool least recently goes first (usage decays by half
  every ``half_life``), then that owner's jobs by priority and age; so owners submitting at
  once share the pool evenly, and one who computed a lot an hour ago waits a little.

Both can cap the units one owner runs at once (``max_running``). An owner's usage is the
cpu-seconds of the units it ran. A lease charges the unit's whole allowance (cpus times timeout)
at once, so a batch leased in one call is shared out unit by unit; the result refunds what the
unit did not use, and a lease given back or expired refunds it all (see ``charge``). Stores keep
each owner's running units and usage (``Share``), written with the changes that move them.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockercomp.protocol.jobfile import JobSpec

from .lifecycle import UnitChange


@dataclass(frozen=True)
class Candidate:
    """A job that may have units to lease."""

    job: str
    owner: str
    priority: int
    created_at: float


@dataclass
class Share:
    """One owner's use of the pool: units running now, and cpu-seconds used, as of ``at``."""

    running: int = 0
    usage: float = 0.0
    at: float = 0.0


class Scheduler(ABC):
    name = ""

    def __init__(self, max_running: int = 0, half_life: float = 3600.0) -> None:
        """``max_running``: units one owner may run at once (0: no cap); ``half_life``: how
        fast past usage is forgotten (seconds)."""
        if max_running < 0 or half_life <= 0:
            raise ValueError("max_running cannot be negative and half_life must be positive")
        self.max_running = max_running
        self.half_life = half_life

    @abstractmethod
    def pick(self, candidates: Sequence[Candidate], shares: Mapping[str, Share], now: float) -> Candidate:
        """The job to lease the next unit of (``candidates`` is not empty)."""

    def admits(self, owner: str, shares: Mapping[str, Share]) -> bool:
        """Whether one more unit of this owner may run."""
        share = shares.get(owner)
        return not self.max_running or share is None or share.running < self.max_running

    def usage(self, share: Share | None, now: float) -> float:
        """An owner's usage as of ``now``, decayed."""
        if share is None:
            return 0.0
        return share.usage * math.exp2(-max(0.0, now - share.at) / self.half_life)

    def add(self, share: Share, running: int, usage: float, now: float) -> None:
        """Move an owner's share by a change's ``charge``."""
        share.usage = max(0.0, self.usage(share, now) + usage)
        share.running = max(0, share.running + running)
        share.at = now


class Fifo(Scheduler):
    name = "fifo"

    def pick(self, candidates: Sequence[Candidate], shares: Mapping[str, Share], now: float) -> Candidate:
        return min(candidates, key=lambda c: (-c.priority, c.created_at, c.job))


class FairShare(Scheduler):
    name = "fairshare"

    def pick(self, candidates: Sequence[Candidate], shares: Mapping[str, Share], now: float) -> Candidate:
        return min(candidates, key=lambda c: (self.usage(shares.get(c.owner), now), -c.priority, c.created_at, c.job))


SCHEDULERS: dict[str, type[Scheduler]] = {s.name: s for s in (Fifo, FairShare)}


def charge(change: UnitChange, spec: JobSpec) -> tuple[int, float]:
    """What a unit's change does to its owner's share: (units running, cpu-seconds). A lease
    charges the unit's allowance (all of its containers' cpus for its timeout); ending a lease
    refunds it; a result charges its runtime."""
    timeout = spec.resources.timeout
    runtime = sum(
        min(max(0.0, u.result.runtime), timeout) for u in change.attempts if u.result is not None
    )  # a client's word, so never more than the unit was allowed
    return change.leases, spec.unit_cpus * (change.leases * timeout + runtime)
