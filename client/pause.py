"""Why this client's containers are paused, and the loop that makes them so.

Two kinds of reason, kept apart:
- the master's, per attempt: its job is suspended (command ``pause``) until it says
  ``resume`` (Slots.held);
- the volunteer's, for the whole client: ``dockercomp client pause`` (a control file in the
  work directory, so a paused client stays paused across restarts), outside ``run_hours``,
  or not idle (``idle_load``). While one holds, the client leases nothing and starts no
  queued grant (Slots.paused); a queued grant whose deadline comes near goes back unstarted.
An attempt's containers are paused (``docker pause``: frozen, memory kept, the attempt kept)
while any reason holds, and run again once none does.

The pauser thread is level-triggered: every tick it works out the reasons and brings each
running attempt's containers to the state they should be in (the runner answers at no cost
when they are there already). So a command the master repeats on every heartbeat, a container
that starts just after a pause, and a client started paused all end the same way.

An attempt the master pauses before it has a container: a queued grant is not started until
it is resumed; one already fetching its inputs goes on, and its container is paused as soon
as it starts (within a tick). Simplest, and the unit never runs more than a tick.
"""

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime

from .runner import Runner
from .settings import ClientSettings
from .slots import Slots

log = logging.getLogger(__name__)

CONTROL_FILE = "paused"  # in the work directory: the volunteer paused this client
TICK = 0.2  # how often the pauser looks at the reasons and the containers
RESUME_RATIO = 0.75  # not idle at idle_load; idle again only below this share of it
LOAD_WINDOW = 60.0  # seconds: the kernel's 1-minute load average decays with this constant


# -- the volunteer's control file ------------------------------------------------------------------


def request_pause(work_dir: str) -> bool:
    """Pause the client of ``work_dir`` (its daemon notices within a tick, and a daemon started
    there later starts paused). False when it was paused already."""
    path = os.path.join(work_dir, CONTROL_FILE)
    if os.path.exists(path):
        return False
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"since": time.time()}, f)
    os.replace(tmp, path)
    return True


def request_resume(work_dir: str) -> bool:
    """Undo ``request_pause``; False when the volunteer had not paused the client."""
    try:
        os.unlink(os.path.join(work_dir, CONTROL_FILE))
    except FileNotFoundError:
        return False
    return True


def pause_requested(work_dir: str) -> bool:
    return os.path.exists(os.path.join(work_dir, CONTROL_FILE))


# -- the schedule and the load -----------------------------------------------------------------------


class Schedule:
    """The local hours units may run in: (start, end) minutes of the day; end before start
    wraps midnight."""

    def __init__(self, ranges: tuple[tuple[int, int], ...], text: str = "") -> None:
        self.ranges = ranges
        self.text = text

    def allows(self, when: datetime) -> bool:
        minute = when.hour * 60 + when.minute
        for start, end in self.ranges:
            if (start <= minute < end) if start < end else (minute >= start or minute < end):
                return True
        return False


class IdleGate:
    """Whether this machine is idle enough to run units: the 1-minute load average minus our
    own containers' share of it must stay below ``threshold``.

    Our share is averaged as the kernel averages the load (a 1-minute exponential decay), so
    the load our containers leave behind after a pause is not taken for someone else's, and
    theirs is not subtracted before it shows. Against flapping, the load is looked at every
    ``interval`` seconds only, and with hysteresis: not idle once the others' load reaches
    the threshold, idle again only once it is below ``RESUME_RATIO`` of it."""

    def __init__(
        self, threshold: float, interval: float, loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self.loadavg = loadavg
        self.idle = True
        self.others = 0.0  # the load of everything but our containers, at the last look
        self.share = 0.0  # our containers' share of the load average
        self._tracked: float | None = None
        self._next = 0.0

    def track(self, ours: float, now: float) -> None:
        """Our containers use ``ours`` cpus now (monotonic ``now``)."""
        if self._tracked is not None:
            decay = math.exp(-max(0.0, now - self._tracked) / LOAD_WINDOW)
            self.share = self.share * decay + ours * (1.0 - decay)
        self._tracked = now

    def check(self, now: float) -> bool:
        if now < self._next:
            return self.idle
        self._next = now + self.interval
        try:
            load = self.loadavg()[0]
        except OSError as exc:  # no load average here: nothing to hold units back for
            log.warning("cannot read the load average: %s", exc)
            return self.idle
        self.others = max(0.0, load - self.share)
        if self.idle and self.others >= self.threshold:
            self.idle = False
        elif not self.idle and self.others < self.threshold * RESUME_RATIO:
            self.idle = True
        return self.idle


# -- the pauser ---------------------------------------------------------------------------------------


class Pauser:
    """One per daemon: its thread (``loop``) keeps the containers paused while a reason holds."""

    def __init__(
        self,
        runner: Runner,
        slots: Slots,
        work_dir: str,
        settings: ClientSettings,
        *,
        share: Callable[[], float] = lambda: 0.0,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        """``share``: the cpus our running containers use now (for ``idle_load``); ``now``:
        the local time (for ``run_hours``)."""
        self.runner = runner
        self.slots = slots
        self.work_dir = work_dir
        self.schedule = Schedule(settings.run_ranges, settings.run_hours) if settings.run_ranges else None
        self.idle = IdleGate(settings.idle_load, settings.idle_check) if settings.idle_load > 0 else None
        self.share = share
        self.now = now
        self.reasons: dict[str, str] = {}  # why the whole client is paused, by kind: volunteer, schedule, idle
        self.paused: frozenset[str] = frozenset()  # attempts whose containers are all paused now (replaced whole)
        self._wake = threading.Event()

    @property
    def client_paused(self) -> bool:
        return bool(self.reasons)

    def order(self, action: str, attempt_id: str) -> bool:
        """The master's ``pause`` or ``resume`` of one attempt; False when it is not here."""
        attempt, changed = self.slots.hold(attempt_id, action == "pause")
        if attempt is None:
            log.info("the master says %s attempt %s, which is not here (any more)", action, attempt_id[:40])
            return False
        if changed:
            why = "its job is suspended" if action == "pause" else "its job runs again"
            log.info("%s: the master says %s (%s)", attempt, action, why)
            self._wake.set()
        return True

    def loop(self, finished: threading.Event) -> None:
        while not finished.is_set():
            self.tick()
            self._wake.wait(TICK)
            self._wake.clear()

    def tick(self) -> None:
        reasons = self._reasons()
        if reasons.keys() != self.reasons.keys():
            if reasons:
                log.info("client paused: %s; leasing nothing, running units paused", "; ".join(reasons.values()))
            else:
                log.info("client resumed: leasing again, paused units go on")
        if reasons != self.reasons:
            self.reasons = reasons
            self.slots.pause_all(bool(reasons))
        held = self.slots.held_ids()
        paused = set()
        for attempt in self.slots.running():
            if attempt.cancel.is_set():  # being stopped: a kill takes a paused container too
                continue
            if reasons or attempt.id in held:
                if self.runner.pause(attempt.id):
                    paused.add(attempt.id)
            elif attempt.id in self.paused and not self.runner.resume(attempt.id):
                paused.add(attempt.id)  # the engine did not resume it: again at the next tick
        if paused != self.paused:
            self.paused = frozenset(paused)
            self.slots.notify()  # the status file shows it

    def _reasons(self) -> dict[str, str]:
        reasons = {}
        if pause_requested(self.work_dir):
            reasons["volunteer"] = "by the volunteer (dockercomp client resume)"
        if self.schedule is not None and not self.schedule.allows(self.now()):
            reasons["schedule"] = f"outside the run hours {self.schedule.text}"
        if self.idle is not None:
            now = time.monotonic()
            with contextlib.suppress(Exception):  # the share is an estimate; never a reason to fail
                self.idle.track(self.share(), now)
            if not self.idle.check(now):
                gate = self.idle
                reasons["idle"] = f"not idle (load of others {gate.others:.2f}, runs below {gate.threshold:g})"
        return reasons
