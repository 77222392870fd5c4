"""Lifecycle events, for whoever listens: a unit done or failed, a result judged invalid, an
attempt errored, a lease expired, a reduce unit created, a job ended (lifecycle.EventKind).

The lifecycle names the events of each change; a store publishes them once the change is
written. Subscribers are called in turn, and one that fails is logged and never breaks the
write nor the others. The per-minute counters the dashboard reads are kept by the store in the
same write as the change (``tally``), so they are as exact as the states themselves.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from .lifecycle import Event, EventKind

log = logging.getLogger(__name__)
Subscriber = Callable[[Event], None]
MINUTE = 60

# what each event counts as, per minute and job, in the store's activity counters
COUNTED = {
    EventKind.RESULT_SUCCEEDED: "completed",
    EventKind.ATTEMPT_ERRORED: "errors",
    EventKind.LEASE_EXPIRED: "errors",
    EventKind.RESULT_INVALID: "invalid",
}
COUNTERS = ("completed", "errors", "invalid", "integrity")


class Bus:
    """Subscribers of one store's events (each master process has its own)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for subscriber in self._subscribers:
                try:
                    subscriber(event)
                except Exception:
                    log.exception(
                        "a subscriber of %s events failed (job %s, unit %s)", event.kind, event.job, event.unit
                    )


def log_event(event: Event) -> None:
    """One log line per event, with every id it concerns."""
    ids = " ".join(f"{name}={value}" for name in ("job", "unit", "attempt", "client", "detail")
                   if (value := getattr(event, name)))  # fmt: skip
    log.info("%s %s", event.kind, ids)


def minute_of(at: float) -> int:
    return int(at // MINUTE) * MINUTE


def tally(events: Iterable[Event]) -> Counter[tuple[int, str, str]]:
    """The activity counters these events move: (minute, job, counter) -> how many. An
    attempt that errored on an input that did not match its hash counts as integrity too."""
    counts: Counter[tuple[int, str, str]] = Counter()
    for event in events:
        name = COUNTED.get(event.kind)
        if name is not None:
            counts[(minute_of(event.at), event.job, name)] += 1
        if event.kind == EventKind.ATTEMPT_ERRORED and event.detail == "integrity":
            counts[(minute_of(event.at), event.job, "integrity")] += 1
    return counts


def active(events: Iterable[Event]) -> set[tuple[int, str]]:
    """The clients these events show at work: (minute, client) for every attempt that ended."""
    ended = (EventKind.RESULT_SUCCEEDED, EventKind.ATTEMPT_ERRORED, EventKind.LEASE_EXPIRED)
    return {(minute_of(event.at), event.client) for event in events if event.kind in ended and event.client}
