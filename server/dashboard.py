"""The dashboard: the page at / (static files under dashboard/), its JSON API under
/api/v1/dashboard/ and the live feed /api/v1/events (server-sent events).

The operator sees everything; a scientist who signs in sees only their own jobs and no
client (the overview's counts stay: they name no one). Each job carries the verbs that apply
to it now (``actions``, from server/lifecycle.py), so the page offers exactly those buttons;
the page sends them to ``POST /api/v1/jobs/ID/VERB`` (server/scientist.py).

Everything comes from the store, so any master of several serves the same page. Each master
polls its store once a second for all of its connected browsers together (one ``Feed``) and
pages, sorts and filters the clients for each in memory (``ClientView``): a browser gets the
counts, its page of clients and their total, never all 10,000; first a whole snapshot, then a
patch of what changed (``diff``/``apply``). Nothing here is state another master needs.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.web import StaticFileHandler

from dockercomp import resources

from .auth import Caller, Role
from .errors import BadRequest, MisdirectedRequest, NotFound
from .handlers import COOKIE, SECURITY_HEADERS, Access, BaseHandler, Master, check_host, parse_int
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


PAGE_SIZE, MAX_PAGE, MAX_OFFSET, MAX_QUERY, MAX_EXPAND = 50, 200, 10**6, 64, 20
VIEW_PARAMS = ("offset", "limit", "sort", "order", "state", "q", "expand")
ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CLIENT_STATES = ("all", "online", "offline", "quarantined")
CLIENT_ORDER: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda c: (c["name"].lower(), c["id"]),
    "state": lambda c: (not c["online"], bool(c["quarantined"])),  # online first, quarantined after the rest
    "busy": lambda c: c["busy"],
    "valid": lambda c: c["valid"],
    "errors": lambda c: c["errors"],
    "reliability": lambda c: c["reliability"],
    "last_seen": lambda c: c["last_seen"],
}
"""Ascending; ties (and ``desc`` ties too) go by name, then id."""
CONTAINER_FIELDS = ("container", "unit", "job", "image", "state", "cpus", "memory", "started_at", "cpu_percent",
                    "memory_usage")  # fmt: skip
HOST_FIELDS = ("cores", "memory", "os", "arch", "docker")


@dataclass(frozen=True)
class ClientView:
    """Which clients one browser shows: a page of them, in an order, filtered by state and by
    a substring of the name or id; ``expand`` names the rows opened to their containers (only
    those carry them). Set with the query of /api/v1/events (the page reconnects on a change)
    or of /api/v1/dashboard; ``parse`` refuses anything else with a 400 that says what to fix."""

    offset: int = 0
    limit: int = PAGE_SIZE
    sort: str = "name"
    order: str = "asc"
    state: str = "all"
    q: str = ""
    expand: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: Mapping[str, list[str]]) -> "ClientView":
        """From query arguments (name -> values, decoded)."""
        unknown = sorted(set(args) - set(VIEW_PARAMS))
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r:.40}; the client view takes {', '.join(VIEW_PARAMS)}")
        one: dict[str, str] = {}
        for name, values in args.items():
            if len(values) != 1:
                raise BadRequest(f"give {name} once, not {len(values)} times")
            one[name] = values[0]
        view = cls()
        offset = parse_int(one["offset"], "offset", 0, MAX_OFFSET) if "offset" in one else view.offset
        limit = parse_int(one["limit"], "limit", 1, MAX_PAGE) if "limit" in one else view.limit
        sort, order, state = one.get("sort", view.sort), one.get("order", view.order), one.get("state", view.state)
        if sort not in CLIENT_ORDER:
            raise BadRequest(f"sort must be one of {', '.join(CLIENT_ORDER)}, got {sort!r:.40}")
        if order not in ("asc", "desc"):
            raise BadRequest(f"order must be asc or desc, got {order!r:.40}")
        if state not in CLIENT_STATES:
            raise BadRequest(f"state must be one of {', '.join(CLIENT_STATES)}, got {state!r:.40}")
        q = one.get("q", "")
        if len(q) > MAX_QUERY or not q.isprintable():
            raise BadRequest(f"q must be at most {MAX_QUERY} printable characters (a part of a name or id)")
        expand = tuple(dict.fromkeys(x for x in one.get("expand", "").split(",") if x))
        if len(expand) > MAX_EXPAND or not all(ID_RE.fullmatch(x) for x in expand):
            raise BadRequest(f"expand must be at most {MAX_EXPAND} client ids separated by commas")
        return cls(offset, limit, sort, order, state, q.strip(), expand)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"expand": list(self.expand)}


def matches(c: Mapping[str, Any], state: str, q: str) -> bool:
    wanted = {"all": True, "online": c["online"], "offline": not c["online"], "quarantined": bool(c["quarantined"])}
    return bool(wanted[state]) and (not q or q in c["name"].lower() or q in c["id"].lower())


def row_json(c: Mapping[str, Any], expanded: bool) -> dict[str, Any]:
    """A client as its row shows it: counts, and its containers only when the row is open."""
    row = {k: c[k] for k in ROW_FIELDS} | {"host": {k: c["host"].get(k) for k in HOST_FIELDS}}
    row["running"] = len(c["containers"])
    if expanded:
        row["containers"] = [{k: box.get(k) for k in CONTAINER_FIELDS} for box in c["containers"]]
    return row


ROW_FIELDS = ("id", "name", "online", "quarantined", "trusted", "last_seen", "slots", "busy", "valid", "invalid",
              "errors", "reliability")  # fmt: skip


@dataclass
class Reading:
    """One read of the store, shared by every view of it: the overview and series (``common``),
    the jobs per viewer, and every client (as ``Client.to_json``) in name order."""

    common: dict[str, Any]
    jobs: dict[View, list[dict[str, Any]]]
    clients: list[dict[str, Any]]
    listing: float = 0.0  # seconds the store took to list the clients, of the whole read
    pages: dict[tuple[str, str, str, str], list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def matching(self, view: ClientView) -> list[dict[str, Any]]:
        """The clients the view's filter passes, in its order; computed once per reading for
        all the views that share the filter and order."""
        key = (view.sort, view.order, view.state, view.q.lower())
        rows = self.pages.get(key)
        if rows is None:
            rows = [c for c in self.clients if matches(c, view.state, key[3])]
            if view.sort != "name":  # stable: ties stay in name order, either way round
                rows.sort(key=CLIENT_ORDER[view.sort], reverse=view.order == "desc")
            elif view.order == "desc":
                rows.reverse()
            self.pages[key] = rows
        return rows

    def snapshot(self, who: View, view: ClientView) -> dict[str, Any]:
        """What one browser shows: the counts, the jobs, and its page of clients with the
        total that matched (a scientist sees no client)."""
        if who is None:
            rows = self.matching(view)
            total, page = len(rows), rows[view.offset : view.offset + view.limit]
        else:
            total, page = 0, []
        clients = [row_json(c, c["id"] in view.expand) for c in page]
        return self.common | {"jobs": self.jobs[who], "total": total, "clients": clients, "view": view.to_json()}


async def snapshot(master: Master, caller: Caller, view: ClientView | None = None) -> dict[str, Any]:
    """Everything the page shows this caller, read now (see ``read``)."""
    who = view_of(caller)
    return (await read(master, [who])).snapshot(who, view or ClientView())


async def read(master: Master, views: Iterable[View]) -> Reading:
    """Everything the page shows, computed from the store once for several viewers: overview,
    clients, jobs, series. The activity of the last hour comes from the store's per-minute
    counters, a few rows a minute. A scientist's view has their jobs only and no clients; the
    overview and the series are the whole master's (counts that name no one)."""
    store = master.store
    now = master.now()
    online_after, policy = now - master.settings.online_window, master.settings.lease_policy
    started = time.monotonic()
    listed = await store.list_clients()
    listing = time.monotonic() - started
    clients = [c.to_json(online_after, policy) for c in listed]
    clients.sort(key=CLIENT_ORDER["name"])
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
            "clients_quarantined": sum(1 for c in clients if c["quarantined"]),
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
    per_view: dict[View, list[dict[str, Any]]] = {}
    for view in set(views):
        if view is None:
            per_view[view] = jobs
        else:  # their own jobs, even those older than the newest MAX_JOBS of everyone's
            per_view[view] = [rows.get(job.id) or await row(job) for job in await store.list_jobs(MAX_JOBS, view)]
    return Reading(common, per_view, clients, listing)


KEYED = ("clients", "jobs")
"""The snapshot's lists of rows with an ``id``: a patch carries only their rows that changed."""


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A patch that turns snapshot ``old`` into ``new`` (``apply``); {} when they are equal.
    ``set``: the top-level keys whose value changed, whole; ``unset``: keys gone; for each
    KEYED list, ``rows``: its rows that are new or changed, and ``order``: its ids in order,
    when that changed (a row whose id is no longer there is removed)."""
    patch: dict[str, Any] = {}
    changed = {k: v for k, v in new.items() if k not in KEYED and (k not in old or old[k] != v)}
    if changed:
        patch["set"] = changed
    if gone := [k for k in old if k not in new]:
        patch["unset"] = gone
    for key in KEYED:
        before, after = old.get(key, []), new.get(key, [])
        by_id = {r["id"]: r for r in before}
        part: dict[str, Any] = {}
        if rows := [r for r in after if by_id.get(r["id"]) != r]:
            part["rows"] = rows
        if (order := [r["id"] for r in after]) != [r["id"] for r in before]:
            part["order"] = order
        if part:
            patch[key] = part
    return patch


def apply(snap: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot ``patch`` (from ``diff``) makes of ``snap``; dashboard/app.js does the same."""
    new = {k: v for k, v in snap.items() if k not in patch.get("unset", ())} | patch.get("set", {})
    for key in KEYED:
        if key in patch:
            rows = {r["id"]: r for r in snap.get(key, [])} | {r["id"]: r for r in patch[key].get("rows", [])}
            order = patch[key]["order"] if "order" in patch[key] else [r["id"] for r in snap.get(key, [])]
            new[key] = [rows[i] for i in order]
    return new


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


@dataclass(eq=False)
class Subscriber:
    """One browser on the feed: whose picture (``who``), which clients (``view``), its queue of
    SSE messages, and the snapshot it will have once it read them all (what a patch is made against)."""

    who: View
    view: ClientView
    queue: "asyncio.Queue[str | None]" = dataclasses.field(default_factory=lambda: asyncio.Queue(maxsize=4))
    sent: dict[str, Any] | None = None


class Feed:
    """One poller per master for all its browsers: every second it reads the store once
    (``read``) and hands each subscriber its view of it: a full ``snapshot`` first, then a
    ``patch`` of what changed (nothing when nothing did), or a full one again where that is
    smaller, or where the browser fell behind (its queue was full: the backlog is dropped).
    A newcomer gets its snapshot at once from the last reading. It stops when nobody listens.
    ``timings`` says how long the last read (and the store's ``list_clients`` within it) and
    the paging for every subscriber took; the snapshots carry them as ``feed``, in ms."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.subscribers: list[Subscriber] = []
        self.reading: Reading | None = None
        self.timings: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, who: View = None, view: ClientView | None = None) -> Subscriber:
        sub = Subscriber(who, view or ClientView())
        if self.reading is not None and who in self.reading.jobs:
            self._send(sub, self.reading.snapshot(who, sub.view))
        self.subscribers.append(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(None)

    @staticmethod
    def _send(sub: Subscriber, snap: dict[str, Any]) -> None:
        """Queue for ``sub`` what turns the snapshot it has into ``snap``."""
        full = "event: snapshot\ndata: " + json.dumps(snap, separators=(",", ":"))
        message = full
        if sub.sent is not None:
            patch = diff(sub.sent, snap)
            if not patch:
                return
            if sub.queue.full():  # a slow browser: drop its backlog, send the whole picture
                while not sub.queue.empty():
                    sub.queue.get_nowait()
            else:
                text = "event: patch\ndata: " + json.dumps(patch, separators=(",", ":"))
                message = text if len(text) < len(full) else full
        sub.queue.put_nowait(message)
        sub.sent = snap

    async def _run(self) -> None:
        while self.subscribers:
            started = time.monotonic()
            try:
                reading = await read(self.master, {s.who for s in self.subscribers})
            except Exception:
                log.exception("dashboard: reading the store failed; trying again")
            else:
                read_s = time.monotonic() - started
                reading.common["feed"] = {k: round(v * 1000, 1) for k, v in self.timings.items()}
                self.reading = reading
                for sub in list(self.subscribers):
                    if sub.who in reading.jobs:  # else it came during the read: next time
                        self._send(sub, reading.snapshot(sub.who, sub.view))
                page_s = time.monotonic() - started - read_s
                self.timings = {"read": read_s, "list_clients": reading.listing, "page": page_s}
            await asyncio.sleep(max(0.05, POLL_INTERVAL - (time.monotonic() - started)))
        self.reading = None


def query_of(handler: BaseHandler) -> dict[str, list[str]]:
    """The query arguments as sent (Tornado's own accessors turn control characters into
    spaces, which would hide them from ``ClientView.parse``)."""
    try:
        return {k: [v.decode() for v in vs] for k, vs in handler.request.query_arguments.items()}
    except UnicodeDecodeError:
        raise BadRequest("the query is not UTF-8") from None


class DashboardHandler(BaseHandler):
    host_checked = True

    def initialize(self, master: Master, access: Access | None = None, feed: Feed | None = None) -> None:  # type: ignore[override]
        super().initialize(master, access)
        self.feed = feed


class SnapshotHandler(DashboardHandler):
    """The page's snapshot, once: the query chooses the clients as for /api/v1/events."""

    async def get(self) -> None:
        view = ClientView.parse(query_of(self))
        self.reply(await snapshot(self.master, self.caller, view))


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
    """Server-sent events: a ``snapshot`` event first, then a ``patch`` event whenever the
    store's picture changed (at most once a second; ``apply`` says how a patch is applied),
    and a comment now and then so proxies keep the stream open. The query chooses the page of
    clients (``ClientView``); the page reconnects with another to change it. Browsers'
    EventSource reconnects by itself (``retry``) when the master restarts."""

    async def get(self) -> None:
        assert self.feed is not None
        view = ClientView.parse(query_of(self))
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.sub = self.feed.subscribe(view_of(self.caller), view)
        try:
            self.write("retry: 1000\n\n")
            await self.flush()
            while True:
                try:
                    data = await asyncio.wait_for(self.sub.queue.get(), KEEPALIVE)
                except TimeoutError:
                    self.write(": keepalive\n\n")
                else:
                    if data is None:
                        break
                    self.write(data + "\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            self.feed.unsubscribe(self.sub)
        if not self.request.connection.stream.closed():  # type: ignore[union-attr]
            self.finish()

    def on_connection_close(self) -> None:
        if self.feed is not None and hasattr(self, "sub"):
            self.feed.unsubscribe(self.sub)


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
