"""The embedded default store: one SQLite file in WAL mode.

Every write is one ``BEGIN IMMEDIATE`` transaction, so several master processes can share
the file: SQLite serialises the writers, and each unit change is a compare-and-set on its
state. Calls are short and run on the event loop's thread; batching (many units per lease
or result request) keeps the number of transactions low.
"""

import json
import logging
import os
import re
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from dockercomp.protocol.jobfile import JobSpec, parse_jobfile
from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.protocol.messages import (
    Ack,
    Action,
    Grant,
    Heartbeat,
    HostFacts,
    LeaseRequest,
    ResultReport,
    ResultStatus,
)

from ...auth import is_stranger
from ...errors import NotFound, ServerError, StoreUnavailable
from ...events import active, minute_of, tally
from ...lifecycle import (
    RETRIES,
    TERMINAL_JOB,
    UNIT_FAILURES,
    AttemptSnap,
    AttemptState,
    AttemptUpdate,
    Event,
    EventKind,
    Holder,
    JobState,
    JobStep,
    LeasePolicy,
    Record,
    UnitChange,
    UnitSnap,
    UnitState,
    Validity,
    Verb,
    commands,
    count_into_job,
    initial_wanted,
    on_control,
    on_dropped,
    on_expire,
    on_found_out,
    on_job_control,
    on_lease,
    on_release,
    on_result,
    on_unit_ended,
    on_unit_reopened,
    unit_start_state,
)
from ...matching import Room
from ...models import Attempt, Client, InputFile, Job, Tally, Unit
from ...scheduler import Candidate, Share, charge
from ..base import (
    REVALIDATE_SLICE,
    ZERO_COUNTS,
    Output,
    Pacer,
    Store,
    UnitInputs,
    client_key,
    draw,
    grant,
    job_counts,
    new_id,
    reduce_inputs,
    replica_account,
    running_of,
    unit_slices,
)
from ..migrate import SCHEMA_VERSION, refuse_newer
from .catalog import Catalog, insert_key
from .checkpoint import Checkpointer

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL,
    account TEXT NOT NULL, client TEXT, expires_at REAL, revoked_at REAL);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys (account);
CREATE TABLE IF NOT EXISTS layers (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, pieces TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, pushed_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS image_tags (tag TEXT PRIMARY KEY, image_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS activity (
    minute INTEGER NOT NULL, job TEXT NOT NULL, counter TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (minute, job, counter));
CREATE TABLE IF NOT EXISTS active_clients (minute INTEGER NOT NULL, client TEXT NOT NULL, PRIMARY KEY (minute, client));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
    finished_at REAL, n_map INTEGER NOT NULL, done_map INTEGER NOT NULL DEFAULT 0,
    failed_map INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, wanted INTEGER NOT NULL, priority INTEGER NOT NULL,
    job_created REAL NOT NULL, inputs TEXT NOT NULL, canonical_hash TEXT, canonical_size INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS units_by_job ON units (job_id, idx);
-- the units a lease may take, per job in order (a suspended or held job's are not in it)
DROP INDEX IF EXISTS units_open;
CREATE INDEX IF NOT EXISTS units_leasable ON units (job_id, idx) WHERE wanted > 0 AND state IN ('ready', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
-- each owner's use of the pool (server/scheduler.py)
-- the blobs each owner put, for per-owner byte quotas (catalog.py)
CREATE TABLE IF NOT EXISTS uploads (owner TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (owner, blob));
CREATE TABLE IF NOT EXISTS upload_totals (owner TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shares (owner TEXT PRIMARY KEY, running INTEGER NOT NULL, usage REAL NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY, unit_id TEXT NOT NULL, job_id TEXT NOT NULL, client_id TEXT NOT NULL,
    state TEXT NOT NULL, leased_at REAL NOT NULL, deadline REAL NOT NULL, finished_at REAL,
    output_hash TEXT, output_size INTEGER, exit_code INTEGER, error TEXT, stderr_tail TEXT NOT NULL DEFAULT '',
    runtime REAL, peak_memory INTEGER, validity TEXT);
-- which units a client may lease (see _LEASABLE); BEGIN IMMEDIATE serialises the check
DROP INDEX IF EXISTS attempts_by_unit;
CREATE INDEX IF NOT EXISTS attempts_of_unit ON attempts (unit_id, client_id, state);
CREATE INDEX IF NOT EXISTS attempts_leased ON attempts (deadline) WHERE state = 'leased';
-- the leases of a client are found by attempts_by_client: a second index of them cost every
-- lease and result one more index write
DROP INDEX IF EXISTS attempts_leased_by_client;
-- the votes of a client, to strike when it is found out (revalidate)
CREATE INDEX IF NOT EXISTS attempts_by_client ON attempts (client_id, state);
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, registered_at REAL NOT NULL, last_seen REAL NOT NULL,
    slots INTEGER NOT NULL, busy INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL,
    containers TEXT NOT NULL DEFAULT '[]', valid INTEGER NOT NULL DEFAULT 0,
    invalid INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, account TEXT NOT NULL DEFAULT '');
"""
T = TypeVar("T")
log = logging.getLogger(__name__)
_IN_LIMIT = 500  # ids in one IN (...) list, well within SQLite's bound on a statement's parameters
_COUNT_SLICE = 10_000  # units counted in one query by unit_counts
# columns added since a table was first made: (table, column, definition)
ADDED_COLUMNS = (
    ("jobs", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("clients", "account", "TEXT NOT NULL DEFAULT ''"),
    ("clients", "memory", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "gpus", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "disk", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "suspended_at", "REAL"),
    ("attempts", "account", "TEXT NOT NULL DEFAULT ''"),
    ("attempts", "network", "TEXT NOT NULL DEFAULT ''"),
    ("attempts", "alone", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "streak", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "contradicted", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "found_out", "REAL"),  # when it was found out, until its votes are struck (revalidate)
)

_UNIT_FAILURES = ", ".join(f"'{kind}'" for kind in sorted(UNIT_FAILURES))
# the attempts of the leasing holder (lifecycle.Holder): its client's, its account's, its network's
_HOLDERS = (
    "(a.client_id = :client OR (a.account <> '' AND a.account = :account)"
    " OR (a.network <> '' AND a.network = :network))"
)
# units this holder may lease: none it is barred from (lifecycle.barred, written as SQL)
_LEASABLE = f"""
SELECT id, job_id, idx, kind, state, wanted, inputs FROM units AS u INDEXED BY units_leasable
WHERE u.job_id = :job AND u.idx > :after AND wanted > 0 AND state IN ('ready', 'running')
  AND NOT EXISTS (SELECT 1 FROM attempts AS a WHERE a.unit_id = u.id AND {_HOLDERS}
                  AND a.state <> 'released' AND NOT (a.state = 'errored' AND a.error IN ({_UNIT_FAILURES})))
  AND (SELECT COUNT(*) FROM attempts AS a WHERE a.unit_id = u.id AND {_HOLDERS} AND a.state = 'errored') < {RETRIES}
ORDER BY idx LIMIT :limit
"""


class SQLiteStore(Catalog, Store):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._pending: list[Event] = []  # the events of the open transaction
        self._charges: dict[str, tuple[int, float, float]] = {}  # ... and what it does to each owner's share
        self._writes = _Writes()  # ... and the rows its unit changes write
        self._counted: dict[str, Job] = {}  # ... and the jobs whose counters they moved, as they now stand
        self._specs: dict[str, JobSpec] = {}  # job specs and owners never change, so caching them is safe
        self._owners: dict[str, str] = {}
        self._checkpointer: Checkpointer | None = None

    # -- life ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA busy_timeout = 30000")
        if (found := db.execute("PRAGMA user_version").fetchone()[0]) > SCHEMA_VERSION:  # migrate.py
            db.close()
            refuse_newer(found, self.path)
        if self.path != ":memory:":  # checkpoints run on a thread of their own (checkpoint.py)
            db.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = Checkpointer(self.path)
        db.executescript(SCHEMA)  # idempotent; a master racing another one waits on busy_timeout
        with _transaction(db):  # schema version 1 (migrate.py's STEPS): the columns added since
            for table, column, definition in ADDED_COLUMNS:
                if column not in {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db = db

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection (reads that need no write lock use it outside a transaction)."""
        if self._db is None:
            raise StoreUnavailable("the store is not open")
        return self._db

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise StoreUnavailable("the store is not open")
        self._pending, self._charges, self._writes, self._counted = [], {}, _Writes(), {}
        with _transaction(self._db) as db:
            yield db
            self._writes.flush(db)
            if self._pending:  # the counters go in the same write as the changes they count
                _count(db, self._pending)
            if self._charges:
                self._account(db)
        events, self._pending = self._pending, []
        self.events.publish(events)

    # -- jobs ---------------------------------------------------------------------------
    async def create_job(
        self, spec: JobSpec, units: UnitInputs, now: float, owner: str = "", held: bool = False
    ) -> Job:
        """A transaction per slice of units, then one for the job row: one transaction for a
        million units would hold the event loop (and every other writer) for seconds."""
        state = JobState.HELD if held else JobState.RUNNING
        job_id, written, pace = new_id(), 0, Pacer()
        wanted, unit_state = initial_wanted(spec.redundancy), unit_start_state(state)
        try:
            async for page in unit_slices(units, self.unit_slice):
                with self._tx() as db:
                    db.executemany(
                        "INSERT INTO units (id, job_id, idx, kind, state, wanted, priority, job_created, inputs)"
                        " VALUES (?, ?, ?, 'map', ?, ?, ?, ?, ?)",
                        [
                            (f"{job_id}.{i}", job_id, i, unit_state, wanted, spec.priority, now, _dump_inputs(inputs))
                            for i, inputs in enumerate(page, written)
                        ],
                    )
                written += len(page)
                await pace()
            job = Job(id=job_id, spec=spec, state=state, created_at=now, owner=owner, n_map=written)
            with self._tx() as db:
                db.execute(
                    "INSERT INTO jobs (id, spec, state, created_at, n_map, owner) VALUES (?, ?, ?, ?, ?, ?)",
                    (job.id, json.dumps(spec.to_dict()), job.state, now, job.n_map, owner),
                )
        except BaseException:
            await self._drop_units(job_id, written)
            raise
        self._specs[job.id], self._owners[job.id] = spec, owner
        return job

    async def _drop_units(self, job_id: str, written: int) -> None:
        """Remove the units a failed create_job wrote, a slice at a time (the job row, written
        last, is not there). Should that fail too, what is left belongs to no job: no query
        finds it."""
        pace = Pacer()
        try:
            for low in range(0, written, self.unit_slice):
                with self._tx() as db:
                    db.execute(
                        "DELETE FROM units WHERE job_id = ? AND idx >= ? AND idx < ?",
                        (job_id, low, low + self.unit_slice),
                    )
                await pace()
        except (ServerError, sqlite3.Error):
            log.warning("units of the job %s that was not made are left behind", job_id, exc_info=True)

    async def get_job(self, job_id: str) -> Job:
        with self._tx() as db:
            return self._job(db, job_id)

    async def list_jobs(self, limit: int = 100, owner: str | None = None) -> list[Job]:
        where, params = ("WHERE owner = ?", (owner, limit)) if owner is not None else ("", (limit,))
        with self._tx() as db:
            rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT ?", params).fetchall()
            return [self._job_from(row) for row in rows]

    async def control_job(self, job_id: str, verb: Verb, now: float) -> Job:
        with self._tx() as db:
            job = self._job(db, job_id)
            control = on_job_control(job.id, job.state, job.suspended_at, _counts(db, job_id), verb, now)
            db.execute(
                "UPDATE jobs SET state = ?, suspended_at = ?, finished_at = COALESCE(finished_at, ?)"
                " WHERE id = ? AND state = ?",
                (control.state, control.suspended_at, now if control.state in TERMINAL_JOB else None, job.id,
                 job.state),
            )  # fmt: skip
            self._pending += control.events
            open_units = db.execute(
                f"SELECT {_UNIT_SNAP} FROM units AS u WHERE u.job_id = ? AND u.state IN ('ready', 'running',"
                " 'suspended') ORDER BY u.idx",
                (job_id,),
            ).fetchall()
            for row in open_units:
                change = on_control(self._snapshot(db, row), control)
                if change is not None:
                    self._apply(db, change, now)
            return self._job(db, job_id)

    async def unit_counts(self, job_id: str) -> dict[str, int]:
        """Counted a slice of units at a time, the loop free between slices: counting a million
        units takes SQLite half a second. Each unit counts once, as it was when its slice was read."""
        with self._tx() as db:
            n_map = self._job(db, job_id).n_map
            if n_map < _COUNT_SLICE:
                return _counts(db, job_id)
        counts, pace = dict(ZERO_COUNTS), Pacer()
        for low in range(0, n_map + 1, _COUNT_SLICE):  # the reduce unit, if any, is unit n_map
            with self._tx() as db:
                rows = db.execute(
                    "SELECT state, COUNT(*) FROM units WHERE job_id = ? AND idx >= ? AND idx < ? GROUP BY state",
                    (job_id, low, low + _COUNT_SLICE),
                )
                for state, n in rows:
                    counts[state] += n
            await pace()
        return counts

    async def list_units(self, job_id: str, offset: int = 0, limit: int = 100) -> list[Unit]:
        with self._tx() as db:
            self._job(db, job_id)
            rows = db.execute(
                "SELECT * FROM units WHERE job_id = ? AND idx >= ? ORDER BY idx LIMIT ?", (job_id, offset, limit)
            ).fetchall()
            return [_unit_from(row) for row in rows]

    async def list_attempts(self, unit_id: str) -> list[Attempt]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM attempts WHERE unit_id = ? ORDER BY leased_at", (unit_id,))
            return [_attempt_from(row) for row in rows]

    async def list_outputs(self, job_id: str, offset: int = 0, limit: int = 100) -> list[Output]:
        with self._tx() as db:
            self._job(db, job_id)
            rows = db.execute(
                "SELECT idx, kind, canonical_hash, canonical_size FROM units WHERE job_id = ? AND idx >= ?"
                " ORDER BY idx LIMIT ?",
                (job_id, offset, limit),
            )
            return [Output(*row) for row in rows]

    async def list_unit_attempts(self, unit_ids: list[str]) -> dict[str, list[Attempt]]:
        found: dict[str, list[Attempt]] = {}
        with self._tx() as db:
            for low in range(0, len(unit_ids), _IN_LIMIT):
                ids = unit_ids[low : low + _IN_LIMIT]
                marks = ", ".join("?" * len(ids))
                rows = db.execute(f"SELECT * FROM attempts WHERE unit_id IN ({marks}) ORDER BY leased_at", ids)
                for row in rows:
                    found.setdefault(row["unit_id"], []).append(_attempt_from(row))
        return found

    async def shares(self) -> dict[str, Share]:
        with self._tx() as db:
            return {row[0]: Share(*row[1:]) for row in db.execute("SELECT * FROM shares")}

    async def activity(self, since: float) -> list[Tally]:
        first = minute_of(since)
        with self._tx() as db:
            rows = db.execute("SELECT minute, job, counter, n FROM activity WHERE minute >= ?", (first,)).fetchall()
            clients = db.execute(
                "SELECT minute, COUNT(*) FROM active_clients WHERE minute >= ? GROUP BY minute", (first,)
            ).fetchall()
        return [Tally(*row) for row in rows] + [Tally(minute, "", "clients", n) for minute, n in clients]

    # -- clients -------------------------------------------------------------------------
    async def register_client(
        self, name: str, slots: int, host: HostFacts, now: float, account: str, token_hash: str
    ) -> Client:
        client = Client(new_id(8), name, now, now, account=account, slots=slots, host=host)
        with self._tx() as db:
            db.execute(
                "INSERT INTO clients (id, name, registered_at, last_seen, slots, host, account)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (client.id, name, now, now, slots, json.dumps(host.to_wire()), account),
            )
            insert_key(db, client_key(client, token_hash))
        return client

    async def get_client(self, client_id: str) -> Client:
        """Every lease asks this (to clamp the request): one indexed read, not a write transaction."""
        row = self.connection.execute("SELECT * FROM clients WHERE id = ?", (client_id,)).fetchone()
        if row is None:
            raise NotFound(f"no client {client_id!r:.40}; register again")
        return _client_from(row)

    async def list_clients(self) -> list[Client]:
        with self._tx() as db:
            return [_client_from(row) for row in db.execute("SELECT * FROM clients ORDER BY name, id")]

    async def heartbeat(self, client_id: str, beat: Heartbeat, now: float) -> list[tuple[Action, str]]:
        containers = [c.to_wire() for c in beat.containers]
        with self._tx() as db:
            updated = db.execute(
                "UPDATE clients SET last_seen = ?, slots = ?, busy = ?, containers = ?, memory = ?, gpus = ?, disk = ?"
                " WHERE id = ?",
                (now, beat.slots, beat.busy, json.dumps(containers), beat.memory, beat.gpus, beat.disk, client_id),
            ).rowcount
            if not updated:
                raise NotFound(f"no client {client_id!r:.40}; register again")
            running = running_of(beat)
            found = {}
            for attempt_id in running:
                row = db.execute(
                    f"SELECT {_ATTEMPT_SNAP}, u.state AS unit_state FROM attempts AS a"
                    " JOIN units AS u ON u.id = a.unit_id WHERE a.id = ?",
                    (attempt_id,),
                ).fetchone()
                if row is not None:
                    found[attempt_id] = (_attempt_snap(row), UnitState(row["unit_state"]))
            return commands(client_id, running, found, beat.paused)

    # -- attempts ------------------------------------------------------------------------
    async def lease(
        self, client_id: str, request: LeaseRequest, now: float, policy: LeasePolicy, network: str = ""
    ) -> list[Grant]:
        grants: list[Grant] = []
        if request.max_units <= 0:
            return grants
        scheduler = self.scheduler
        with self._tx() as db:
            client = db.execute(
                "UPDATE clients SET last_seen = ? WHERE id = ?"
                " RETURNING host, account, slots, valid, invalid, streak, contradicted",
                (now, client_id),
            ).fetchone()
            if client is None:
                raise NotFound(f"no client {client_id!r:.40}; register again")
            record = Record(client["valid"], client["invalid"], client["streak"], client["contradicted"])
            if policy.quarantined(record):
                return grants
            trusted = policy.trusted(record, is_stranger(client["account"]))
            leased = db.execute(
                "SELECT COUNT(*) FROM attempts WHERE client_id = ? AND state = 'leased'", (client_id,)
            ).fetchone()[0]
            wanted = min(request.max_units, policy.room(client["slots"], leased))
            holder = Holder(client_id, replica_account(client["account"]), network)
            room = Room.of(request, json.loads(client["host"]).get("arch", ""))
            shares = {row[0]: Share(*row[1:]) for row in db.execute("SELECT * FROM shares")}
            candidates = [
                Candidate(row[0], row[1], self._spec(db, row[0]).priority, row[2])
                for row in db.execute("SELECT id, owner, created_at FROM jobs WHERE state = 'running'")
            ]
            units = _Leasable(db, holder, wanted + 4)
            changes: list[UnitChange] = []
            while len(grants) < wanted:
                admitted = [c for c in candidates if scheduler.admits(c.owner, shares)]
                if not admitted:
                    break
                job = scheduler.pick(admitted, shares, now)
                spec = self._spec(db, job.job)
                row = units.next(job.job) if room.fits(spec) else None
                if row is None:  # none left for this client, or too big for what is left (it only shrinks)
                    candidates.remove(job)
                    continue
                unit = _unit_from(row)
                snap = UnitSnap(unit.id, unit.job, unit.kind, unit.state, unit.wanted)
                alone = policy.alone(spec.redundancy, unit.state, unit.wanted, trusted, draw)
                change = on_lease(snap, client_id, new_id(8), now, policy.deadline(now, spec.resources.timeout), alone)
                changes.append(change)
                room.take(spec)
                assert change.lease is not None
                grants.append(grant(unit.job, spec, unit, change.lease.id, change.lease.deadline))
                scheduler.add(shares.setdefault(job.owner, Share(at=now)), *charge(change, spec), now)
                self._charge(job.owner, change, spec, now)
            # one statement each for the whole batch: the rows were read in this transaction, and
            # each appears once, so writing them after the loop is the same as writing them in it
            db.executemany(
                "INSERT INTO attempts (id, unit_id, job_id, client_id, state, leased_at, deadline, account, network,"
                " alone) VALUES (?, ?, ?, ?, 'leased', ?, ?, ?, ?, ?)",
                [(c.lease.id, c.unit, c.job, c.lease.client, c.lease.leased_at, c.lease.deadline, holder.account,
                  holder.network, c.lease.alone) for c in changes if c.lease],
            )  # fmt: skip
            db.executemany(
                "UPDATE units SET wanted = ?, state = ? WHERE id = ? AND state = ?",
                [(c.wanted, c.state, c.unit, c.old) for c in changes],
            )
        return grants

    async def record_results(self, client_id: str, reports: list[ResultReport], now: float) -> list[Ack]:
        def one(db: sqlite3.Connection, snaps: dict[str, UnitSnap], report: ResultReport) -> Ack:
            snap = self._snap_in(db, snaps, report.attempt)
            change = on_result(self._spec(db, snap.job).redundancy, snap, client_id, report, now)
            if change is None:
                return Ack(report.attempt, True, "duplicate")
            self._apply(db, change, now)
            return Ack(report.attempt, True)

        return self._each(client_id, [(r.attempt, r) for r in reports], one, now, results=True)

    async def release(self, client_id: str, attempt_ids: list[str], now: float) -> list[Ack]:
        def one(db: sqlite3.Connection, snaps: dict[str, UnitSnap], attempt_id: str) -> Ack:
            snap = self._snap_in(db, snaps, attempt_id)
            change = on_release(self._spec(db, snap.job).redundancy, snap, client_id, attempt_id, now)
            if change is None:
                return Ack(attempt_id, True, "already released")
            self._apply(db, change, now)
            return Ack(attempt_id, True)

        return self._each(client_id, [(a, a) for a in attempt_ids], one, now)

    async def revalidate(self, now: float, limit: int = REVALIDATE_SLICE) -> int:
        with self._tx() as db:
            decided = 0
            found = db.execute("SELECT id, found_out FROM clients WHERE found_out IS NOT NULL").fetchall()
            for client_id, found_out in found:
                self._writes.flush(db)
                quarantined = bool(self.policy.quarantined(Record(*db.execute(_RECORD, (client_id,)).fetchone())))
                units = db.execute(_VOTES, (client_id, found_out, quarantined, limit - decided)).fetchall()
                for (unit_id,) in units:
                    decided += 1
                    self._writes.flush(db)
                    unit = db.execute(f"SELECT {_UNIT_SNAP} FROM units AS u WHERE u.id = ?", (unit_id,)).fetchone()
                    if unit is None:
                        continue  # a reduce unit dropped when a unit it was made from reopened
                    snap = self._snapshot(db, unit)
                    job = self._job(db, snap.job)
                    change = on_found_out(job.spec.redundancy, snap, client_id, job.state, now, quarantined)
                    if change is not None:
                        self._apply(db, change, now)
                if decided >= limit:
                    break
                db.execute("UPDATE clients SET found_out = NULL WHERE id = ? AND found_out = ?", (client_id, found_out))
            return decided

    async def expire(self, now: float, policy: LeasePolicy) -> int:
        with self._tx() as db:
            quiet = now - policy.heartbeat_timeout
            silent = frozenset(row[0] for row in db.execute("SELECT id FROM clients WHERE last_seen < ?", (quiet,)))
            units = db.execute(_EXPIRED, (now, quiet)).fetchall()
            expired = 0
            for (unit_id,) in units:
                snap = self._snap(db, unit_id)
                change = on_expire(self._spec(db, snap.job).redundancy, snap, now, silent)
                if change is not None:
                    self._apply(db, change, now)
                    expired += sum(1 for e in change.events if e.kind == EventKind.LEASE_EXPIRED)
            return expired

    # -- inside a transaction: load, apply ---------------------------------------------------
    def _each(self, client_id: str, items: list[tuple[str, T]],
              one: Callable[[sqlite3.Connection, dict[str, UnitSnap], T], Ack], now: float,
              results: bool = False) -> list[Ack]:  # fmt: skip
        """Apply one item after another in one transaction, their units loaded together first;
        a refused item is its Ack. No result of a quarantined client is taken."""
        acks = []
        with self._tx() as db:
            record = self._touch(db, client_id, now)
            refused = self.policy.quarantined(record) if results else ""
            if refused:
                return [Ack(attempt_id, False, f"result not taken: {refused}") for attempt_id, _ in items]
            snaps = self._snaps_of(db, [attempt_id for attempt_id, _ in items])
            for attempt_id, item in items:
                try:
                    acks.append(one(db, snaps, item))
                except ServerError as exc:
                    acks.append(Ack(attempt_id, False, str(exc)))
        return acks

    def _snaps_of(self, db: sqlite3.Connection, attempt_ids: list[str]) -> dict[str, UnitSnap]:
        """The unit of each attempt, found through it (the result and release paths), with all
        its attempts: a query per _IN_LIMIT attempts, a row per attempt of each unit."""
        rows: dict[str, list[sqlite3.Row]] = {}
        unique = list(dict.fromkeys(attempt_ids))
        for low in range(0, len(unique), _IN_LIMIT):
            ids = unique[low : low + _IN_LIMIT]
            for row in db.execute(_SNAPS_OF.format(marks=", ".join("?" * len(ids))), ids):
                rows.setdefault(row[0], []).append(row)
        return {
            attempt_id: UnitSnap(u[1], u[2], u[3], UnitState(u[4]), u[5], tuple(_attempt_snap(r, 6) for r in unit))
            for attempt_id, unit in rows.items()
            for u in unit[:1]
        }

    def _snap_in(self, db: sqlite3.Connection, snaps: dict[str, UnitSnap], attempt_id: str) -> UnitSnap:
        """The unit of an attempt from ``snaps``, read again if an earlier item changed it."""
        snap = snaps.get(attempt_id)
        if snap is None:
            raise NotFound(f"attempt {attempt_id!r:.40} is unknown or was leased to another client")
        return self._snap(db, snap.id) if snap.id in self._writes.changed else snap

    def _snap(self, db: sqlite3.Connection, unit_id: str) -> UnitSnap:
        self._writes.flush(db)
        unit = db.execute(f"SELECT {_UNIT_SNAP} FROM units AS u WHERE u.id = ?", (unit_id,)).fetchone()
        return self._snapshot(db, unit)

    def _snapshot(self, db: sqlite3.Connection, unit: sqlite3.Row) -> UnitSnap:
        attempts = db.execute(f"SELECT {_ATTEMPT_SNAP} FROM attempts AS a WHERE a.unit_id = ?", (unit["id"],))
        return UnitSnap(
            unit["id"], unit["job_id"], unit["kind"], UnitState(unit["state"]), unit["wanted"],
            tuple(_attempt_snap(a) for a in attempts),
        )  # fmt: skip

    def _apply(self, db: sqlite3.Connection, change: UnitChange, now: float) -> None:
        """Write a change: the unit as a compare-and-set on its state, its attempts, the
        clients' counters, and what follows for the job when the unit ended. The rows wait in
        ``_writes`` for the end of the transaction (or a read that needs them)."""
        writes = self._writes
        writes.unit(change)
        for update in change.attempts:
            writes.attempt(update)
        for client_id in change.errors:
            writes.count(client_id, errors=1)
        for client_id in change.valid:
            writes.count(client_id, valid=1, streak=1)
        for client_id in change.cleared:
            writes.count(client_id, valid=1, cleared=1)
        if change.invalid or change.contradicted:
            writes.flush(db)  # the records below are read as they stand
        for client_id, invalid in [(c, True) for c in change.invalid] + [(c, False) for c in change.contradicted]:
            before = Record(*db.execute(_RECORD, (client_id,)).fetchone())
            after = before.judged(invalid)
            found_out = now if self.policy.found_out(before, after) else None
            db.execute(
                "UPDATE clients SET invalid = ?, streak = ?, contradicted = ?, found_out = COALESCE(?, found_out)"
                " WHERE id = ?", (after.invalid, after.streak, after.contradicted, found_out, client_id),
            )  # fmt: skip
        self._pending += change.events
        self._charge(self._owner(db, change.job), change, self._spec(db, change.job), now)
        if change.ended:
            self._unit_ended(db, change, now)
        elif change.reopened:
            self._unit_reopened(db, change, now)

    def _unit_reopened(self, db: sqlite3.Connection, change: UnitChange, now: float) -> None:
        job = self._count_into(db, change, -1)
        step = on_unit_reopened(job_counts(job), change, now)
        self._pending += step.events
        if step.step == JobStep.REDO:
            self._writes.flush(db)
            reduce = db.execute("SELECT id FROM units WHERE job_id = ? AND kind = 'reduce'", (job.id,)).fetchone()
            if reduce is not None:
                self._charge(job.owner, on_dropped(self._snap(db, reduce["id"])), job.spec, now)
                db.execute("DELETE FROM attempts WHERE unit_id = ?", (reduce["id"],))
                db.execute("DELETE FROM units WHERE id = ?", (reduce["id"],))
        if step.state is not None:
            db.execute("UPDATE jobs SET state = ?, finished_at = NULL WHERE id = ? AND state = ?",
                       (step.state, job.id, job.state))  # fmt: skip
            job.state, job.finished_at = step.state, None

    def _unit_ended(self, db: sqlite3.Connection, change: UnitChange, now: float) -> None:
        job = self._count_into(db, change, +1)
        step = on_unit_ended(job_counts(job), change, now)
        self._pending += step.events
        if step.step == JobStep.REDUCE:
            self._writes.flush(db)
            maps = [_unit_from(r) for r in db.execute("SELECT * FROM units WHERE job_id = ? ORDER BY idx", (job.id,))]
            db.execute(
                "INSERT INTO units (id, job_id, idx, kind, state, wanted, priority, job_created, inputs)"
                " VALUES (?, ?, ?, 'reduce', ?, ?, ?, ?, ?)",
                (
                    f"{job.id}.{job.n_map}", job.id, job.n_map, unit_start_state(job.state),
                    initial_wanted(job.spec.redundancy),
                    job.spec.priority, job.created_at, _dump_inputs(reduce_inputs(maps)),
                ),
            )  # fmt: skip
        elif step.state is not None:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ? WHERE id = ? AND state = ?",
                (step.state, now, job.id, job.state),
            )
            job.state, job.finished_at = step.state, now

    def _count_into(self, db: sqlite3.Connection, change: UnitChange, by: int) -> Job:
        """The unit's job with the unit counted in (or out): read once per transaction, its
        counters moved here and written with the rest of ``_writes``."""
        job = self._counted.get(change.job)
        if job is None:
            job = self._counted[change.job] = self._job(db, change.job)
        counter = count_into_job(change)
        if counter is not None:
            setattr(job, counter, getattr(job, counter) + by)
            self._writes.job(job.id, counter, by)
        return job

    def _charge(self, owner: str, change: UnitChange, spec: JobSpec, now: float) -> None:
        running, usage = charge(change, spec)
        if running or usage:
            old_running, old_usage, _ = self._charges.get(owner, (0, 0.0, now))
            self._charges[owner] = (old_running + running, old_usage + usage, now)

    def _account(self, db: sqlite3.Connection) -> None:
        for owner, (running, usage, now) in self._charges.items():
            row = db.execute("SELECT running, usage, at FROM shares WHERE owner = ?", (owner,)).fetchone()
            share = Share(*row) if row else Share(at=now)
            self.scheduler.add(share, running, usage, now)
            db.execute("INSERT OR REPLACE INTO shares VALUES (?, ?, ?, ?)", (owner, share.running, share.usage, now))

    def _owner(self, db: sqlite3.Connection, job_id: str) -> str:
        owner = self._owners.get(job_id)
        if owner is None:
            owner = self._job(db, job_id).owner
        return owner

    def _touch(self, db: sqlite3.Connection, client_id: str, now: float) -> Record:
        """Mark the client seen; its record."""
        row = db.execute(
            "UPDATE clients SET last_seen = ? WHERE id = ? RETURNING valid, invalid, streak, contradicted",
            (now, client_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"no client {client_id!r:.40}; register again")
        return Record(*row)

    def _job(self, db: sqlite3.Connection, job_id: str) -> Job:
        self._writes.flush(db)  # its counters as they stand
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r:.40}")
        return self._job_from(row)

    def _spec(self, db: sqlite3.Connection, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            spec = self._specs[job_id] = self._job(db, job_id).spec
        return spec

    def _job_from(self, row: sqlite3.Row) -> Job:
        self._owners[row["id"]] = row["owner"]
        spec = self._specs.get(row["id"])
        if spec is None:
            spec = self._specs[row["id"]] = parse_jobfile(json.loads(row["spec"]))
        return Job(
            id=row["id"], spec=spec, state=JobState(row["state"]), created_at=row["created_at"],
            finished_at=row["finished_at"], owner=row["owner"], n_map=row["n_map"], done_map=row["done_map"],
            failed_map=row["failed_map"], suspended_at=row["suspended_at"],
        )  # fmt: skip


_UNIT_SNAP = "u.id, u.job_id, u.kind, u.state, u.wanted"
_ATTEMPT_SNAP = (
    "a.id, a.client_id, a.state, a.output_hash, a.output_size, a.error, a.validity, a.deadline, a.account, a.network,"
    " a.alone"
)
# the units with a lease past its deadline (a suspended unit's leases do not expire by their
# deadline, on_expire) or held by a silent client: two halves, so each reads an index of leased
# attempts (the clients' first) instead of the OR scanning every attempt ever made
_EXPIRED = """
SELECT a.unit_id FROM attempts AS a INDEXED BY attempts_leased JOIN units AS u ON u.id = a.unit_id
WHERE a.state = 'leased' AND a.deadline < ? AND u.state <> 'suspended'
UNION
SELECT a.unit_id FROM clients AS c CROSS JOIN attempts AS a INDEXED BY attempts_by_client
WHERE c.last_seen < ? AND a.client_id = c.id AND a.state = 'leased'
"""
# units found through some of their attempts (x), each with all its attempts (a): column 0 is
# the attempt it was found through, 1-5 are _UNIT_SNAP's, 6-16 _ATTEMPT_SNAP's
_SNAPS_OF = f"""
SELECT x.id, {_UNIT_SNAP}, {_ATTEMPT_SNAP} FROM attempts AS x JOIN units AS u ON u.id = x.unit_id
JOIN attempts AS a ON a.unit_id = u.id WHERE x.id IN ({{marks}})
"""
_RECORD = "SELECT valid, invalid, streak, contradicted FROM clients WHERE id = ?"  # a lifecycle.Record
# the units a found-out client voted on, holds alone or (quarantined) holds at all, from before it
# was found out, in jobs still open or done (lifecycle.on_found_out)
_VOTES = """
SELECT DISTINCT a.unit_id FROM attempts AS a INDEXED BY attempts_by_client JOIN jobs AS j ON j.id = a.job_id
WHERE a.client_id = ? AND a.leased_at <= ? AND j.state NOT IN ('failed', 'cancelled')
  AND ((a.state = 'succeeded' AND (a.validity IS NULL OR a.validity = 'valid'))
       OR (a.alone AND a.state IN ('leased', 'timed_out')) OR (? AND a.state = 'leased'))
LIMIT ?
"""


def _counts(db: sqlite3.Connection, job_id: str) -> dict[str, int]:
    rows = db.execute("SELECT state, COUNT(*) FROM units WHERE job_id = ? GROUP BY state", (job_id,))
    return ZERO_COUNTS | {state: n for state, n in rows}


def _count(db: sqlite3.Connection, events: list[Event]) -> None:
    db.executemany(
        "INSERT INTO activity VALUES (?, ?, ?, ?) ON CONFLICT (minute, job, counter) DO UPDATE SET n = n + excluded.n",
        [(*key, n) for key, n in tally(events).items()],
    )
    db.executemany("INSERT OR IGNORE INTO active_clients VALUES (?, ?)", sorted(active(events)))


def _attempt_snap(row: sqlite3.Row, at: int = 0) -> AttemptSnap:
    """The attempt whose _ATTEMPT_SNAP columns begin at column ``at`` of ``row``."""
    v = tuple(row)[at : at + 11]
    return AttemptSnap(
        v[0], v[1], AttemptState(v[2]), v[3], v[4], v[5], Validity(v[6]) if v[6] else None, v[7], v[8], v[9],
        bool(v[10]),
    )  # fmt: skip


class _Writes:
    """The rows a transaction's unit changes write, held until the transaction ends or a read
    needs them, so a batch of results costs one statement per kind of row, not one per result.
    The transaction holds the database's only writer: no one reads them late."""

    def __init__(self) -> None:
        self.changed: set[str] = set()  # every unit changed in the transaction, written or not
        self.clear()

    def clear(self) -> None:
        self.units: list[tuple[object, ...]] = []  # the units' compare-and-sets, in order
        self.plain: list[tuple[object, ...]] = []  # attempt updates without a result
        self.results: list[tuple[object, ...]] = []  # ... with one
        self.clients: dict[str, list[int]] = {}  # per client: errors, valid, streak, cleared to add
        self.jobs: dict[tuple[str, str], int] = {}  # (job, counter): what to add to it

    def unit(self, change: UnitChange) -> None:
        self.units.append(
            (change.state, change.wanted, change.canonical_hash, change.canonical_size, change.unit, change.old)
        )
        self.changed.add(change.unit)

    def attempt(self, update: AttemptUpdate) -> None:
        """New values for one attempt; None keeps the old one (COALESCE)."""
        values = (update.state, update.finished_at, update.validity, update.deadline, update.alone)
        result = update.result
        if result is None:
            self.plain.append((*values, update.id))
            return
        succeeded = result.status == ResultStatus.SUCCEEDED
        self.results.append((
            *values, result.output_hash if succeeded else None, result.output_size if succeeded else None,
            result.exit_code, result.error, result.stderr_tail[-STDERR_TAIL:], result.runtime, result.peak_memory,
            update.id,
        ))  # fmt: skip

    def count(self, client_id: str, errors: int = 0, valid: int = 0, streak: int = 0, cleared: int = 0) -> None:
        counts = self.clients.setdefault(client_id, [0, 0, 0, 0])
        for i, n in enumerate((errors, valid, streak, cleared)):
            counts[i] += n

    def job(self, job_id: str, counter: str, by: int) -> None:
        self.jobs[(job_id, counter)] = self.jobs.get((job_id, counter), 0) + by

    def flush(self, db: sqlite3.Connection) -> None:
        if self.units:
            written = db.executemany(
                "UPDATE units SET state = ?, wanted = ?, canonical_hash = ?, canonical_size = ?"
                " WHERE id = ? AND state = ?", self.units,
            ).rowcount  # fmt: skip
            if written != len(self.units):  # the transaction holds the only writer: this is a bug, not a race
                raise StoreUnavailable(
                    f"a unit of {[row[4] for row in self.units[:3]]} changed under its own transaction"
                )
        keep = (
            "state = COALESCE(?, state), finished_at = COALESCE(?, finished_at), validity = COALESCE(?, validity),"
            " deadline = COALESCE(?, deadline), alone = COALESCE(?, alone)"
        )
        if self.plain:
            db.executemany(f"UPDATE attempts SET {keep} WHERE id = ?", self.plain)
        if self.results:
            db.executemany(
                f"UPDATE attempts SET {keep}, output_hash = ?, output_size = ?, exit_code = ?, error = ?,"
                " stderr_tail = ?, runtime = ?, peak_memory = ? WHERE id = ?", self.results,
            )  # fmt: skip
        if self.clients:
            db.executemany(
                "UPDATE clients SET errors = errors + ?, valid = valid + ?, streak = streak + ?,"
                " invalid = MAX(invalid - ?, 0) WHERE id = ?",
                [(e, v, s, c, client_id) for client_id, (e, v, s, c) in self.clients.items()],
            )
        for counter in sorted({counter for _, counter in self.jobs}):  # done_map, failed_map
            db.executemany(
                f"UPDATE jobs SET {counter} = {counter} + ? WHERE id = ?",
                [(by, job_id) for (job_id, name), by in self.jobs.items() if name == counter],
            )
        self.clear()


class _Leasable:
    """The units of each job this client may lease, in order, read a page at a time."""

    def __init__(self, db: sqlite3.Connection, holder: Holder, page: int) -> None:
        self.db, self.holder, self.page = db, holder, page
        self._rows: dict[str, deque[sqlite3.Row]] = {}
        self._after: dict[str, int] = {}  # the last index read of each job; -1 before the first page
        self._more: dict[str, bool] = {}

    def next(self, job_id: str) -> sqlite3.Row | None:
        rows = self._rows.setdefault(job_id, deque())
        if not rows and self._more.get(job_id, True):
            h = self.holder
            params = {"job": job_id, "after": self._after.get(job_id, -1), "client": h.client, "account": h.account,
                      "network": h.network, "limit": self.page}  # fmt: skip
            page = self.db.execute(_LEASABLE, params)
            rows.extend(page.fetchall())
            self._more[job_id] = len(rows) == self.page
            if rows:
                self._after[job_id] = rows[-1]["idx"]
        return rows.popleft() if rows else None


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"the database is busy, try again: {exc}") from None
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")


def _dump_inputs(inputs: list[InputFile]) -> str:
    """What json.dumps makes of ``[[name, hash, size], ...]``; a unit's one input of plain
    characters (every map unit's) written directly, which is a third of what creating a
    million-unit job costs otherwise."""
    if len(inputs) == 1:
        f = inputs[0]
        if _PLAIN.fullmatch(f.name) and _PLAIN.fullmatch(f.hash) and type(f.size) is int:
            return f'[["{f.name}", "{f.hash}", {f.size}]]'
    return json.dumps([[f.name, f.hash, f.size] for f in inputs])


_PLAIN = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but '"' and '\\': what JSON writes as it is


def _unit_from(row: sqlite3.Row) -> Unit:
    keys = row.keys()
    return Unit(
        id=row["id"], job=row["job_id"], idx=row["idx"], kind=row["kind"], state=UnitState(row["state"]),
        wanted=row["wanted"], inputs=[InputFile(*f) for f in json.loads(row["inputs"])],
        canonical_hash=row["canonical_hash"] if "canonical_hash" in keys else None,
        canonical_size=row["canonical_size"] if "canonical_size" in keys else None,
    )  # fmt: skip


def _attempt_from(row: sqlite3.Row) -> Attempt:
    return Attempt(
        id=row["id"], unit=row["unit_id"], job=row["job_id"], client=row["client_id"],
        state=AttemptState(row["state"]), leased_at=row["leased_at"], deadline=row["deadline"],
        finished_at=row["finished_at"], output_hash=row["output_hash"], output_size=row["output_size"],
        exit_code=row["exit_code"], error=row["error"], stderr_tail=row["stderr_tail"], runtime=row["runtime"],
        peak_memory=row["peak_memory"], validity=Validity(row["validity"]) if row["validity"] else None,
    )  # fmt: skip


def _client_from(row: sqlite3.Row) -> Client:
    return Client(
        id=row["id"], name=row["name"], registered_at=row["registered_at"], last_seen=row["last_seen"],
        account=row["account"], slots=row["slots"], busy=row["busy"],
        host=HostFacts.from_wire(json.loads(row["host"])), containers=json.loads(row["containers"]),
        valid=row["valid"], invalid=row["invalid"], errors=row["errors"], memory=row["memory"], gpus=row["gpus"],
        disk=row["disk"], streak=row["streak"], contradicted=row["contradicted"],
    )  # fmt: skip
