"""The attempts this client holds: grants queued for a slot and attempts running in one,
within the slots, cpus and memory the volunteer donated.

One lock guards both, and one condition wakes whoever waits on a change: workers for a
queued grant, the leaser for a free slot.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

from dockercomp.protocol.messages import Grant

from .attempt import Attempt

RELEASE_MARGIN = 10.0  # a queued grant this close to its deadline goes back unstarted


class Slots:
    def __init__(self, slots: int, memory: int, prefetch: bool = True) -> None:
        self.slots = slots
        self.memory = memory
        self.prefetch = prefetch
        self.changed = True  # something the status file shows has changed since it was written
        self.cond = threading.Condition()
        self._queue: deque[Attempt] = deque()
        self._active: dict[str, Attempt] = {}

    def wanted(self) -> tuple[int, float, int] | None:
        """(units, free cpus, free memory) worth leasing now, or None.

        Idle slots get a batch of their number, within the cpus and memory left. When every
        slot is busy and nothing is queued, the next batch is leased ahead (prefetch), so it
        starts as soon as slots free instead of after a round trip and a download.
        """
        with self.cond:
            running, queued = len(self._active), len(self._queue)
            held = [*self._active.values(), *self._queue]
            free = self.slots - running - queued
            if free > 0:
                cpus = max(0.0, self.slots - sum(a.grant.cpus for a in held))
                return free, cpus, max(0, self.memory - sum(a.grant.memory for a in held))
            if self.prefetch and not queued and running:
                return self.slots, float(self.slots), self.memory
            return None

    def add(self, grants: list[Grant], clock_offset: float = 0.0) -> list[Attempt]:
        """Queue new grants. Their deadlines are the master's clock; they are kept on this
        host's monotonic clock, corrected by ``clock_offset`` (the master's minus ours)."""
        now = time.monotonic()
        master_now = time.time() + clock_offset
        attempts = []
        for grant in grants:
            attempt = Attempt(grant, expires=now + (grant.deadline - master_now))
            attempt.release_by = attempt.expires - min(RELEASE_MARGIN, (attempt.expires - now) / 4)
            attempts.append(attempt)
        with self.cond:
            self._queue.extend(attempts)
            self._touch()
        return attempts

    def take(self, stopping: threading.Event) -> tuple[Attempt | None, list[Attempt]]:
        """Wait for a queued grant and mark it running; None once ``stopping`` is set. Also
        the grants found too close to their deadline on the way, to be released."""
        stale: list[Attempt] = []
        with self.cond:
            while not stopping.is_set():
                if not self._queue:
                    self.cond.wait()
                    continue
                attempt = self._queue.popleft()
                if time.monotonic() >= attempt.release_by:
                    stale.append(attempt)
                    continue
                attempt.phase = "preparing"
                self._active[attempt.id] = attempt
                self._touch()
                return attempt, stale
        return None, stale

    def done(self, attempt: Attempt) -> None:
        with self.cond:
            self._active.pop(attempt.id, None)
            self._touch()

    def stale(self) -> list[Attempt]:
        """Take out the queued grants whose deadline is near."""
        now = time.monotonic()
        with self.cond:
            stale = [a for a in self._queue if now >= a.release_by]
            for attempt in stale:
                self._queue.remove(attempt)
            if stale:
                self._touch()
        return stale

    def drain(self) -> list[Attempt]:
        """Take out every queued grant (the daemon is stopping)."""
        with self.cond:
            left = list(self._queue)
            self._queue.clear()
            self._touch()
        return left

    def abort(self, attempt_id: str) -> tuple[Attempt | None, bool]:
        """Stop a running attempt, or drop a queued one: (the attempt, whether it ran)."""
        with self.cond:
            active = self._active.get(attempt_id)
            if active is not None:
                active.stop("abort")
                self._touch()
                return active, True
            queued = next((a for a in self._queue if a.id == attempt_id), None)
            if queued is not None:
                self._queue.remove(queued)
                self._touch()
            return queued, False

    def stop_all(self, why: str) -> None:
        with self.cond:
            for attempt in self._active.values():
                attempt.stop(why)
            self._touch()

    def running(self) -> list[Attempt]:
        with self.cond:
            return list(self._active.values())

    def queued(self) -> list[Attempt]:
        with self.cond:
            return list(self._queue)

    def busy(self) -> int:
        with self.cond:
            return len(self._active)

    def wait(self, predicate: Callable[[], object], timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(predicate, timeout)

    def notify(self) -> None:
        with self.cond:
            self._touch()

    def _touch(self) -> None:
        self.changed = True
        self.cond.notify_all()
