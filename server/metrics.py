"""``GET /metrics``: the master in the Prometheus text format (prometheus_client).

Two kinds of metric. Those read from the store at scrape time are the same on every master
sharing the store: units, jobs, clients, slots, and attempts finished (the store's per-minute
activity counters, kept in the same write as each lifecycle change: events.tally). Those of
this master process alone, kept in its own registry (never prometheus_client's global one, so
several masters in one process stay apart): request latencies and blob bytes served; sum them
over the masters in a query.

What a scrape costs the store: one read of the newest MAX_JOBS job rows; one unit_counts per
open job (counted in slices, the loop free between them: SQLite counts a million units in
half a second); the online clients (one list_clients, cached a second by the master); and the
activity rows since the last scrape's closed minutes (the first scrape reads them all once).
A job's progress comes from its counters, no unit is read for it.
"""

import functools
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Concatenate, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .events import COUNTERS, MINUTE, minute_of
from .handlers import BaseHandler, Master, bearer_token
from .lifecycle import JobState, UnitState
from .models import Job

MAX_JOBS = 1000  # the newest jobs a scrape looks at (an open job older than them is not counted)
OPEN = (JobState.HELD, JobState.RUNNING, JobState.SUSPENDED)
SETTLED = 2 * MINUTE  # activity minutes older than this are final: summed once, never read again
P = ParamSpec("P")
R = TypeVar("R")
Answering = Callable[Concatenate[Master, P], Awaitable[R]]


def timed(route: str) -> Callable[[Answering[P, R]], Answering[P, R]]:
    """An answer (api.lease, ...) observed in dockercomp_request_seconds{route}: the one place
    both ways of answering it (handlers.PlainRequests and its handler) go through."""

    def wrap(answer: Answering[P, R]) -> Answering[P, R]:
        @functools.wraps(answer)
        async def observed(master: Master, *args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await answer(master, *args, **kwargs)
            finally:
                master.meters.request_seconds.labels(route).observe(time.perf_counter() - started)

        return observed

    return wrap


async def attempts_finished(master: Master) -> dict[str, int]:
    """Every activity counter summed over the minutes the store keeps. Minutes older than
    SETTLED are added to this process's running sums once and never read again (a write into
    one later, by a master whose clock is that far behind, is missed until a restart); only
    the recent ones are read at each scrape."""
    meters = master.meters
    tallies = await master.store.activity(meters.settled_until)
    since = meters.settled_until  # read again: a scrape answered meanwhile may have settled minutes
    until = max(since, minute_of(master.now() - SETTLED))
    fresh = dict.fromkeys(COUNTERS, 0)
    for t in tallies:
        if t.counter in fresh and t.minute >= since:
            (meters.settled if t.minute < until else fresh)[t.counter] += t.n
    meters.settled_until = until
    return {name: meters.settled[name] + fresh[name] for name in COUNTERS}


async def store_families(master: Master) -> list[Metric]:
    """The metrics every master sharing the store answers alike."""
    store = master.store
    jobs = await store.list_jobs(MAX_JOBS)
    open_jobs = [job for job in jobs if job.state in OPEN]
    units = {s.value: 0 for s in UnitState}
    for job in open_jobs:
        for state, n in (await store.unit_counts(job.id)).items():
            units[state] = units.get(state, 0) + n
    online = await master.online_clients()
    finished = CounterMetricFamily(
        "dockercomp_attempts_finished", "Attempts finished by outcome (completed, errors, invalid; integrity: "
        "errors whose input failed its hash), by every master sharing the store", labels=["outcome"],
    )  # fmt: skip
    for outcome, n in (await attempts_finished(master)).items():
        finished.add_metric([outcome], n)
    return [
        gauge("dockercomp_units", "Units of the open jobs (held, running, suspended) by state; a finished job's "
              "units are left out (see dockercomp_jobs)", "state", units),
        gauge("dockercomp_job_progress_ratio", "Share of an open job's map units decided (done or failed), "
              "from its counters", "job", {job.id: progress(job) for job in open_jobs}),
        gauge("dockercomp_jobs", f"Jobs by state (of the newest {MAX_JOBS})", "state",
              {s.value: sum(job.state == s for job in jobs) for s in JobState}),
        gauge("dockercomp_clients_online", "Clients heard from within the online window", "", {"": len(online)}),
        gauge("dockercomp_slots_donated", "Slots of the online clients, as their last heartbeats said", "",
              {"": sum(c.slots for c in online)}),
        gauge("dockercomp_slots_busy", "Busy slots of the online clients, as their last heartbeats said", "",
              {"": sum(c.busy for c in online)}),
        finished,
    ]  # fmt: skip


def gauge(name: str, help: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """A gauge of one label's values (``label`` ""): one value, unlabelled)."""
    family = GaugeMetricFamily(name, help, labels=[label] if label else [])
    for value, n in values.items():
        family.add_metric([value] if label else [], n)
    return family


def progress(job: Job) -> float:
    return (job.done_map + job.failed_map) / job.n_map if job.n_map else 0.0


class Families:
    """A collector of families read beforehand (what a registry asks of a collector)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class MetricsHandler(BaseHandler):
    """The operator's token (the route table) or --metrics-token-file's may read it."""

    async def prepare(self) -> None:
        token, secret = bearer_token(self.request.headers), self.master.meters.token
        if self.request.method == "GET" and secret and token and hmac.compare_digest(token.encode(), secret.encode()):
            self._prepared = True  # a GET has no body to limit
            return
        await super().prepare()

    async def get(self) -> None:
        shared = CollectorRegistry(auto_describe=False)
        shared.register(Families(await store_families(self.master)))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(shared) + generate_latest(self.master.meters.registry))
