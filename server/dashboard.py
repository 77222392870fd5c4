"""The dashboard: the page at / (static files under dashboard/), its JSON API under
/api/v1/dashboard/ and the live feed /api/v1/events (server-sent events).

The operator sees everything; a scientist who signs in sees only their own jobs and no
client (the overview's counts stay: they name no one). Each job carries the verbs that apply
to it now (``actions``, from server/lifecycle.py), so the page offers exactly those buttons;
the page sends them to ``POST /api/v1/jobs/ID/VERB`` (server/scientist.py).

Everything comes from the store, so any master of several serves the same page. Each master
polls its store once a second for all of its connected browsers together (one ``Feed``) and
pushes a fresh snapshot to each when its view changed; nothing here is state another master needs.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.web import StaticFileHandler

from dockercomp import resources

from .auth import Caller, Role
from .errors import BadRequest, MisdirectedRequest, NotFound
from .handlers import COOKIE, SECURITY_HEADERS, Access, BaseHandler, Master, check_host
from .lifecycle import VERBS, JobState, Verb, drmaa2_state, started
from .models import Job, Tally
from .store.base import ZERO_COUNTS

log = logging.getLogger(__name__)

STATIC = resources.dashboard_dir()
HOUR = 3600.0
MINUTE = 60.0
THROUGHPUT_WINDOW = 600.0  # seconds of finished attempts a job's throughput is measured over
POLL_INTERVAL = 1.0
KEEPALIVE = 15.0
MAX_JOBS = 100
OPEN_STATES = ("ready", "running", "suspended")
# the page loads its own scripts and styles only (dashboard/index.html), talks only to this
# master, and sets style attributes (the progress bars' widths) from its own script
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


View = str | None
"""Whose picture a snapshot is: None for the operator's (everything), else a scientist's name."""


def view_of(caller: Caller) -> View:
    return None if caller.role == Role.OPERATOR else caller.name


def actions(state: JobState, counts: Mapping[str, int]) -> list[str]:
    """The verbs that would change a job now, as server/lifecycle.py's VERBS says (a verb
    repeated where it leads already is harmless, but no button to offer) and its control rule
    for hold (only a job that has not started can be held)."""
    return [
        verb.value
        for verb, (applies, leads_to) in VERBS.items()
        if state in applies and leads_to != state and not (verb == Verb.HOLD and started(counts))
    ]


def job_json(job: Job, counts: Mapping[str, int]) -> dict[str, Any]:
    """A job as the page shows it: with its units per state, DRMAA2 state and actions."""
    return job.to_json() | {
        "counts": dict(counts),
        "drmaa2": drmaa2_state(job.state, counts).value,
        "actions": actions(job.state, counts),
    }


async def snapshot(master: Master, caller: Caller) -> dict[str, Any]:
    """Everything the page shows this caller (see ``snapshots``)."""
    view = view_of(caller)
    return (await snapshots(master, [view]))[view]


async def snapshots(master: Master, views: Iterable[View]) -> dict[View, dict[str, Any]]:
    """Everything the page shows, computed from the store once for several views: overview,
    clients, jobs, series. The activity of the last hour comes from the store's per-minute
    counters, a few rows a minute. A scientist's view has their jobs only and no clients; the
    overview and the series are the whole master's (counts that name no one)."""
    store = master.store
    now = master.now()
    online_after, policy = now - master.settings.online_window, master.settings.lease_policy
    clients = [c.to_json(online_after, policy) for c in await store.list_clients()]
    tallies = await store.activity(now - HOUR)
    totals = dict(ZERO_COUNTS)
    recent: dict[str, int] = {}
    for t in tallies:
        if t.counter == "completed" and t.minute > now - THROUGHPUT_WINDOW - MINUTE:
            recent[t.job] = recent.get(t.job, 0) + t.n

    async def row(job: Job) -> dict[str, Any]:
        counts = await store.unit_counts(job.id)
        per_minute = recent.get(job.id, 0) / max(job.spec.redundancy.quorum, 1) / (THROUGHPUT_WINDOW / MINUTE)
        remaining = sum(counts.get(s, 0) for s in OPEN_STATES)
        eta = remaining / per_minute * MINUTE if per_minute > 0 and remaining else None
        return job_json(job, counts) | {"per_minute": round(per_minute, 2), "eta": eta}

    jobs = [await row(job) for job in await store.list_jobs(MAX_JOBS)]
    for j in jobs:
        for state, n in j["counts"].items():
            totals[state] = totals.get(state, 0) + n
    online = [c for c in clients if c["online"]]
    hour = {name: sum(t.n for t in tallies if t.counter == name) for name in ("errors", "invalid", "integrity")}
    common = {
        "now": now,
        "online_window": master.settings.online_window,
        "overview": {
            "clients_online": len(online),
            "clients_offline": len(clients) - len(online),
            "slots": sum(c["slots"] for c in online),
            "busy": sum(c["busy"] for c in online),
            "containers": sum(len(c["containers"]) for c in online),
            "units": totals,
            "completed_per_minute": last_minute(tallies, "completed", now),
            "integrity_errors_hour": hour["integrity"],
            "invalid_results_hour": hour["invalid"],
            "errors_hour": hour["errors"],
        },
        "series": series(tallies, now),
    }
    rows = {j["id"]: j for j in jobs}
    result: dict[View, dict[str, Any]] = {}
    for view in set(views):
        if view is None:
            result[view] = common | {"clients": clients, "jobs": jobs}
        else:  # their own jobs, even those older than the newest MAX_JOBS of everyone's
            own = [rows.get(job.id) or await row(job) for job in await store.list_jobs(MAX_JOBS, view)]
            result[view] = common | {"clients": [], "jobs": own}
    return result


def last_minute(tallies: list[Tally], counter: str, now: float) -> float:
    """The counter over the last 60 seconds: this minute's count, and the share of the
    previous minute's that falls within them."""
    start = (now // MINUTE) * MINUTE
    this = sum(t.n for t in tallies if t.counter == counter and t.minute == start)
    before = sum(t.n for t in tallies if t.counter == counter and t.minute == start - MINUTE)
    return round(this + before * (1 - (now - start) / MINUTE), 1)


def series(tallies: list[Tally], now: float) -> dict[str, list[float]]:
    """Per minute over the last hour: completed attempts, and clients that finished one."""
    start = (now // MINUTE) * MINUTE - 59 * MINUTE
    completed = [0.0] * 60
    active = [0.0] * 60
    for t in tallies:
        i = int((t.minute - start) // MINUTE)
        if 0 <= i < 60:
            if t.counter == "completed":
                completed[i] += t.n
            elif t.counter == "clients":
                active[i] += t.n
    return {"t": [start + i * MINUTE for i in range(60)], "completed": completed, "active_clients": active}


class Feed:
    """One poller per master for all its browsers: every second it reads the store once and
    hands each subscriber its view's snapshot when that changed. It stops when nobody listens."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.subscribers: dict[asyncio.Queue[str | None], View] = {}
        self.last: dict[View, str] = {}
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, view: View = None) -> "asyncio.Queue[str | None]":
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4)
        if view in self.last:
            queue.put_nowait(self.last[view])
        self.subscribers[queue] = view
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return queue

    def unsubscribe(self, queue: "asyncio.Queue[str | None]") -> None:
        self.subscribers.pop(queue, None)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)

    async def _run(self) -> None:
        while self.subscribers:
            started = time.monotonic()
            views = set(self.subscribers.values())
            for gone in set(self.last) - views:  # nobody watches it: a newcomer waits for a fresh one
                del self.last[gone]
            try:
                snaps = await snapshots(self.master, views)
                data = {view: json.dumps(snap, separators=(",", ":")) for view, snap in snaps.items()}
            except Exception:
                log.exception("dashboard: reading the store failed; trying again")
                data = dict(self.last)
            changed = {view for view, text in data.items() if text != self.last.get(view)}
            self.last.update(data)
            for queue, view in list(self.subscribers.items()):
                if view not in changed:
                    continue
                if queue.full():  # a slow browser gets the newest snapshot, not a backlog
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(data[view])
            await asyncio.sleep(max(0.05, POLL_INTERVAL - (time.monotonic() - started)))
        self.last = {}


class DashboardHandler(BaseHandler):
    host_checked = True

    def initialize(self, master: Master, access: Access | None = None, feed: Feed | None = None) -> None:  # type: ignore[override]
        super().initialize(master, access)
        self.feed = feed


class SnapshotHandler(DashboardHandler):
    async def get(self) -> None:
        self.reply(await snapshot(self.master, self.caller))


class OverviewHandler(DashboardHandler):
    async def get(self) -> None:
        snap = await snapshot(self.master, self.caller)
        self.reply({"overview": snap["overview"], "series": snap["series"]})


SORT_KEYS = {
    "name": lambda c: (c["name"].lower(), c["id"]),
    "last_seen": lambda c: -c["last_seen"],
    "reliability": lambda c: -c["reliability"],
    "done": lambda c: -c["valid"],
    "errors": lambda c: -c["errors"],
    "containers": lambda c: -len(c["containers"]),
}


class DashboardClientsHandler(DashboardHandler):
    """``?state=online|offline|all&sort=name|last_seen|reliability|done|errors|containers
    &offset=N&limit=N``: one page of clients with their containers, and the total."""

    async def get(self) -> None:
        state = self.get_query_argument("state", "all")
        sort = self.get_query_argument("sort", "name")
        if state not in ("all", "online", "offline"):
            raise BadRequest("state must be all, online or offline")
        if sort not in SORT_KEYS:
            raise BadRequest(f"sort must be one of {', '.join(SORT_KEYS)}")
        offset, limit = self.int_arg("offset", 0, 0, 10**9), self.int_arg("limit", 100, 1, 1000)
        online_after, policy = self.master.now() - self.master.settings.online_window, self.master.settings.lease_policy
        clients = [c.to_json(online_after, policy) for c in await self.master.store.list_clients()]
        if state != "all":
            clients = [c for c in clients if c["online"] == (state == "online")]
        clients.sort(key=SORT_KEYS[sort])
        self.reply({"total": len(clients), "clients": clients[offset : offset + limit]})


class DashboardJobsHandler(DashboardHandler):
    async def get(self) -> None:
        self.reply({"jobs": (await snapshot(self.master, self.caller))["jobs"]})


class DashboardJobHandler(DashboardHandler):
    """One job with its units: state, attempts, which clients, timings; and the verbs that
    apply to it now. Another scientist's job is as good as unknown (404)."""

    async def get(self, job_id: str) -> None:
        store = self.master.store
        job = await store.get_job(job_id)
        if not self.caller.owns(job.owner):
            raise NotFound(f"no job {job_id!r:.40}")
        offset, limit = self.int_arg("offset", 0, 0, 10**9), self.int_arg("limit", 200, 1, 1000)
        units, page = [], await store.list_units(job_id, offset, limit)
        by_unit = await store.list_unit_attempts([unit.id for unit in page])  # one query for the page
        for unit in page:
            attempts = by_unit.get(unit.id, [])
            units.append(
                {
                    "id": unit.id,
                    "index": unit.idx,
                    "kind": unit.kind,
                    "state": unit.state.value,
                    "attempts": len(attempts),
                    "clients": sorted({a.client for a in attempts}),
                    "first_leased": min((a.leased_at for a in attempts), default=None),
                    "last_finished": max((a.finished_at for a in attempts if a.finished_at), default=None),
                    "runtime": max((a.runtime for a in attempts if a.runtime is not None), default=None),
                    "history": [_attempt_json(a) for a in attempts],
                }
            )
        counts = await store.unit_counts(job_id)
        self.reply({"job": job_json(job, counts), "units": units, "offset": offset})


def _attempt_json(a: Any) -> dict[str, Any]:
    return {
        "client": a.client,
        "state": a.state.value,
        "leased_at": a.leased_at,
        "finished_at": a.finished_at,
        "runtime": a.runtime,
        "error": a.error,
        "validity": a.validity.value if a.validity else None,
    }


class EventsHandler(DashboardHandler):
    """Server-sent events: a ``snapshot`` event whenever the store's picture changed (at most
    once a second), a comment now and then so proxies keep the stream open. Browsers'
    EventSource reconnects by itself (``retry``) when the master restarts."""

    async def get(self) -> None:
        assert self.feed is not None
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.queue = self.feed.subscribe(view_of(self.caller))
        try:
            self.write("retry: 1000\n\n")
            await self.flush()
            while True:
                try:
                    data = await asyncio.wait_for(self.queue.get(), KEEPALIVE)
                except TimeoutError:
                    self.write(": keepalive\n\n")
                else:
                    if data is None:
                        break
                    self.write(f"event: snapshot\ndata: {data}\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            self.feed.unsubscribe(self.queue)
        if not self.request.connection.stream.closed():  # type: ignore[union-attr]
            self.finish()

    def on_connection_close(self) -> None:
        if self.feed is not None and hasattr(self, "queue"):
            self.feed.unsubscribe(self.queue)


class PageHandler(StaticFileHandler):
    """The page and its assets, from dashboard/ (no build step)."""

    def initialize(self, path: str, default_filename: str | None = None, master: Master | None = None) -> None:  # type: ignore[override]
        super().initialize(path, default_filename)
        self.master = master

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.set_header("Content-Security-Policy", PAGE_CSP)

    def prepare(self) -> None:
        if self.master is not None:
            try:
                check_host(self.request, self.master)
            except MisdirectedRequest as exc:
                self.set_status(exc.status)
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.finish(f"{exc}\n")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


class SessionHandler(BaseHandler):
    """The dashboard's sign-in: POST with the operator's or a scientist's token as bearer sets
    it as a cookie (HttpOnly, SameSite=Strict) that the page's GET requests and its event
    stream then carry; GET says who is signed in; DELETE signs out. The cookie counts for
    reading, and for the job controls when the request also carries the header
    ``X-Dockercomp-Session: 1`` (see BaseHandler._token)."""

    host_checked = True

    async def get(self) -> None:
        self.reply({"role": self.caller.role.value, "name": self.caller.name})

    async def post(self) -> None:
        self.set_cookie(
            COOKIE, self._token("POST") or "", httponly=True, samesite="Strict",
            secure=self.request.protocol == "https", path="/",
        )  # fmt: skip
        self.reply({"role": self.caller.role.value, "name": self.caller.name})

    async def delete(self) -> None:
        self.clear_cookie(COOKIE, path="/")
        self.reply({"signed_out": True})


API = [
    (r"/api/v1/dashboard", SnapshotHandler),
    (r"/api/v1/dashboard/overview", OverviewHandler),
    (r"/api/v1/dashboard/jobs", DashboardJobsHandler),
    (r"/api/v1/dashboard/jobs/([^/]+)", DashboardJobHandler),
    (r"/api/v1/events", EventsHandler),
]
"""What every person signed in may read: a scientist's view is cut down to their own jobs."""
OPERATOR_API = [
    (r"/api/v1/dashboard/clients", DashboardClientsHandler),
]
"""What only the operator may read: the clients, who they are and what runs on them."""


def pages(master: Master | None = None) -> list[tuple[str, Any, dict[str, Any]]]:
    """The page and its assets: anyone may load them; the page asks for a token. With the
    master, they are served only under its own names (``check_host``)."""
    return [
        (r"/()", PageHandler, {"path": str(STATIC), "default_filename": "index.html", "master": master}),
        (r"/dashboard/(.*)", PageHandler, {"path": str(STATIC), "master": master}),
    ]
