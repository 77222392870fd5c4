"""The attempts this client holds: grants queued for a slot and attempts running in one,
within the slots, cpus and memory the volunteer donated.

One lock guards both, and one condition wakes whoever waits on a change: workers for a
queued grant, the leaser for a free slot.

Every grant is held to what the volunteer donated: a queued grant starts only when its cpus
and memory fit beside those running (a prefetched batch waits for the ones before it to
end), and one that could never fit (more than all of it) is handed out at once, to be
refused by the provisioner before anything of it is downloaded.

While the client is paused (client/pause.py) nothing is leased and no queued grant starts;
a grant the master paused (``held``) is not started until it is resumed.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

from dockercomp.protocol.messages import Grant

from .attempt import Attempt

RELEASE_MARGIN = 10.0  # a queued grant this close to its deadline goes back unstarted


class Slots:
    def __init__(self, slots: int, memory: int, prefetch: bool = True, gpus: int = 0) -> None:
        self.slots = slots
        self.memory = memory
        self.gpus = gpus
        self.prefetch = prefetch
        self.changed = True  # something the status file shows has changed since it was written
        self.cond = threading.Condition()
        self.paused = False  # the whole client is paused: lease nothing, start nothing
        self._held: set[str] = set()  # attempts the master paused (their jobs are suspended)
        self._queue: deque[Attempt] = deque()
        self._active: dict[str, Attempt] = {}

    def wanted(self) -> tuple[int, float, int] | None:
        """(units, free cpus, free memory) worth leasing now, or None.

        Idle slots get a batch of their number, within the cpus and memory left. When every
        slot is busy and nothing is queued, the next batch is leased ahead (prefetch), so it
        starts as soon as slots free instead of after a round trip and a download.
        """
        with self.cond:
            if self.paused:
                return None
            running, queued = len(self._active), len(self._queue)
            held = [*self._active.values(), *self._queue]
            free = self.slots - running - queued
            if free > 0:
                cpus = max(0.0, self.slots - sum(a.grant.unit_cpus for a in held))
                return free, cpus, max(0, self.memory - sum(a.grant.unit_memory for a in held))
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
        """Wait for a queued grant that may start (the client not paused, the grant not held,
        it fits) and mark it running. None once ``stopping`` is set, or with the grants found
        too close to their deadline meanwhile, to be released."""
        with self.cond:
            while not stopping.is_set():
                stale = self._take_stale()
                attempt = None if self.paused else next((a for a in self._queue if self._may_start(a)), None)
                if attempt is not None:
                    self._queue.remove(attempt)
                    attempt.phase = "preparing"
                    self._active[attempt.id] = attempt
                    self._touch()
                    return attempt, stale
                if stale:
                    return None, stale
                # a queued grant goes stale by the clock alone: look again now and then
                self.cond.wait(1.0 if self._queue else None)
        return None, []

    def free_gpus(self) -> int:
        """The donated GPUs no attempt held here asks for."""
        with self.cond:
            return max(0, self.gpus - sum(a.grant.gpus for a in (*self._active.values(), *self._queue)))

    def _may_start(self, attempt: Attempt) -> bool:
        """Not held by the master, and its cpus, memory and GPUs fit beside those running (or
        could never fit: then it goes at once, to be refused)."""
        if attempt.id in self._held:
            return False
        g = attempt.grant
        if g.unit_cpus > self.slots + 1e-9 or g.unit_memory > self.memory or g.gpus > self.gpus:
            return True
        running = [a.grant for a in self._active.values()]
        return (
            sum(r.unit_cpus for r in running) + g.unit_cpus <= self.slots + 1e-9
            and sum(r.unit_memory for r in running) + g.unit_memory <= self.memory
            and sum(r.gpus for r in running) + g.gpus <= self.gpus
        )

    def _take_stale(self) -> list[Attempt]:
        now = time.monotonic()
        stale = [a for a in self._queue if now >= a.release_by]
        for attempt in stale:
            self._queue.remove(attempt)
            self._held.discard(attempt.id)
        if stale:
            self._touch()
        return stale

    def done(self, attempt: Attempt) -> None:
        with self.cond:
            self._active.pop(attempt.id, None)
            self._held.discard(attempt.id)
            self._touch()

    def stale(self) -> list[Attempt]:
        """Take out the queued grants whose deadline is near."""
        with self.cond:
            return self._take_stale()

    def drain(self) -> list[Attempt]:
        """Take out every queued grant (the daemon is stopping)."""
        with self.cond:
            left = list(self._queue)
            self._queue.clear()
            self._held.difference_update(a.id for a in left)
            self._touch()
        return left

    # -- pausing (client/pause.py) --------------------------------------------------------------
    def pause_all(self, paused: bool) -> None:
        """Pause the whole client (lease nothing, start nothing), or undo it."""
        with self.cond:
            if self.paused != paused:
                self.paused = paused
                self._touch()

    def hold(self, attempt_id: str, held: bool) -> tuple[Attempt | None, bool]:
        """The master paused (or resumed) one attempt: (the attempt, None when it is not here;
        whether that changed anything)."""
        with self.cond:
            attempt = self._active.get(attempt_id) or next((a for a in self._queue if a.id == attempt_id), None)
            changed = attempt is not None and (attempt_id in self._held) != held
            if changed:
                (self._held.add if held else self._held.discard)(attempt_id)
                self._touch()
            return attempt, changed

    def held_ids(self) -> set[str]:
        with self.cond:
            return set(self._held)

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
                self._held.discard(attempt_id)
                self._touch()
            return queued, False

    def stop_all(self, why: str) -> None:
        with self.cond:
            self.stop(list(self._active), why)

    def stop(self, attempt_ids: list[str], why: str) -> None:
        """Stop these running attempts (those still here)."""
        with self.cond:
            for attempt_id in attempt_ids:
                if attempt_id in self._active:
                    self._active[attempt_id].stop(why)
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
