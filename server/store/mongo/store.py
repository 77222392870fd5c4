"""The scale-out store: MongoDB through PyMongo's async API, chunk bytes in GridFS.

Several stateless masters share one database. A unit document embeds its attempts, so every
change of a unit (lease, result, release, expiry) is one single-document compare-and-set on
its ``version``: read the unit, ask lifecycle.py what follows, write it back only if nobody
changed it meanwhile, else read again and retry. A lease also requires ``wanted > 0`` and the
client's absence from the unit's ``clients`` list, so two masters leasing at once never
issue more attempts than wanted, nor two attempts of one unit to one client.

What follows a unit's change in other documents (client counters, job counters, the reduce
unit, the job's final state) is written after the unit's compare-and-set succeeded, with
``$inc`` and conditional updates; only the master whose ``$inc`` completes a job's map units
creates the reduce unit, and a unique (job_id, idx) index makes that happen once.

Blobs live in GridFS (gridfs.py); the package's ``open_mongodb`` opens both on one client.
"""

import contextlib
import inspect
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

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
    UnitKind,
)

from ...auth import is_stranger
from ...errors import NotFound, ServerError, StoreUnavailable
from ...events import active, minute_of, tally
from ...lifecycle import (
    TERMINAL_JOB,
    TERMINAL_UNIT,
    AttemptSnap,
    AttemptState,
    Event,
    EventKind,
    Holder,
    JobControl,
    JobState,
    JobStep,
    LeasePolicy,
    Record,
    UnitChange,
    UnitSnap,
    UnitState,
    Validity,
    Verb,
    barred,
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
from ..migrate import META_ID, SCHEMA_VERSION, refuse_newer
from .catalog import Catalog, guard
from .deployment import check_deployment

log = logging.getLogger(__name__)
Doc = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")

CAS_TRIES = 64  # a unit changes a handful of times in its life; this many misses means trouble
_IN_LIMIT = 500  # attempt ids in one $in query
OPEN = {"state": {"$in": [UnitState.READY.value, UnitState.RUNNING.value]}, "wanted": {"$gt": 0}}
LEASE_ORDER = [("job_id", ASCENDING), ("idx", ASCENDING)]
NO_HISTORY = {"attempts": 0, "clients": 0}  # what listing and leasing units do not need
RECORD = {"valid": 1, "invalid": 1, "streak": 1, "contradicted": 1}  # a client's lifecycle.Record


def durable_writes(url: str) -> dict[str, Any]:
    """The client options a master sets unless the URL says otherwise: writes acknowledged by a
    majority of the replica set (so a failover cannot roll them back) and retried once across a
    failover. The URL's own ``w=`` or ``retryWrites=`` win (the start-up check warns about them)."""
    given = {part.split("=", 1)[0].lower() for part in urllib.parse.urlsplit(url).query.split("&") if part}
    options: dict[str, Any] = {}
    if "w" not in given:
        options["w"] = "majority"
    if "retrywrites" not in given:
        options["retryWrites"] = True
    return options


def _database(target: Any, name: str) -> tuple[Any, AsyncMongoClient[Doc] | None]:
    """The database for a URL, a client or a database (returned as is), and the client this
    store opened itself (and must close). Classes, not instances, are asked about
    ``get_collection``, because clients answer any attribute with a database of that name."""
    if isinstance(target, str):
        client: AsyncMongoClient[Doc] = AsyncMongoClient(target, **durable_writes(target))
        return client.get_default_database(name), client
    if callable(getattr(type(target), "get_collection", None)):
        return target, None
    return target.get_database(name), None


class MongoStore(Catalog, Store):
    """``target``: a ``mongodb://`` URL (database from its path, else ``database``), an
    ``AsyncMongoClient`` or a stand-in with its API, or a database of one."""

    def __init__(self, target: Any, database: str = "dockercomp") -> None:
        super().__init__()
        self.db, self._client = _database(target, database)
        self._activity = self.db["activity"]
        self._active = self.db["active_clients"]
        self._jobs = self.db["jobs"]
        self._units = self.db["units"]
        self._clients = self.db["clients"]
        self._keys = self.db["keys"]
        self._layers = self.db["layers"]
        self._images = self.db["images"]
        self._uploads = self.db["uploads"]
        self._shares = self.db["shares"]
        self._specs: dict[str, JobSpec] = {}  # job specs and owners never change, so caching them is safe
        self._owners: dict[str, str] = {}

    # -- life ---------------------------------------------------------------------------
    @guard
    async def open(self) -> None:
        """Check the deployment (when this store opened the client itself), refuse a schema newer
        than this master's, create the indexes every query uses (docs/mongodb.md lists them and
        the queries they serve; tests/server/test_mongo_indexes.py holds the store to it) and
        record the schema version (migrate.py)."""
        if self._client is not None:
            await check_deployment(self._client.admin, self._client)
        meta = await self.db["meta"].find_one({"_id": META_ID})
        refuse_newer(int((meta or {}).get("version", 0)), "MongoDB")
        units = self._units
        try:  # only units that want attempts are in the leasing index
            await units.create_index(LEASE_ORDER, name="units_leasable", partialFilterExpression={"wanted": {"$gt": 0}})
        except OperationFailure:
            await units.create_index(LEASE_ORDER, name="units_leasable")
        await units.create_index([("job_id", ASCENDING), ("idx", ASCENDING)], name="units_by_job", unique=True)
        for key in ("attempts.id", "attempts.deadline", "attempts.client"):
            await units.create_index(key, name=key.replace(".", "_"))
        await self._jobs.create_index([("created_at", DESCENDING)], name="jobs_by_age")
        await self._jobs.create_index("state", name="jobs_by_state")
        await self._clients.create_index([("name", ASCENDING), ("_id", ASCENDING)], name="clients_by_name")
        await self._clients.create_index("last_seen", name="clients_last_seen")
        await self._activity.create_index(
            [("minute", ASCENDING), ("job", ASCENDING), ("counter", ASCENDING)], name="activity_key", unique=True
        )
        await self._keys.create_index("token_hash", name="keys_by_token", unique=True)
        await self._keys.create_index("account", name="keys_by_account")
        await self._images.create_index("tags", name="images_by_tag")
        await self._images.create_index([("pushed_at", DESCENDING), ("_id", ASCENDING)], name="images_newest")
        await self._images.create_index(
            [("owner", ASCENDING), ("pushed_at", DESCENDING), ("_id", ASCENDING)], name="images_by_owner"
        )
        await self._keys.create_index([("created_at", ASCENDING), ("_id", ASCENDING)], name="keys_by_age")
        await self._clients.create_index("found_out", name="clients_found_out")  # revalidation's $ne: None
        await self.db["meta"].update_one({"_id": META_ID}, {"$max": {"version": SCHEMA_VERSION}}, upsert=True)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- jobs ---------------------------------------------------------------------------
    @guard
    async def create_job(
        self, spec: JobSpec, units: UnitInputs, now: float, owner: str = "", held: bool = False
    ) -> Job:
        """The units go in first, an ``insert_many`` per slice, and the job last: a lease
        looks for units only in the jobs it finds, so none is leasable before its job is there.
        Should anything fail, the units are removed again (MongoDB has no transaction here)."""
        state = JobState.HELD if held else JobState.RUNNING
        job, pace = Job(id=new_id(), spec=spec, state=state, created_at=now, owner=owner), Pacer()
        try:
            async for page in unit_slices(units, self.unit_slice):
                await self._units.insert_many(
                    [_new_unit(job, i, UnitKind.MAP, inputs) for i, inputs in enumerate(page, job.n_map)]
                )
                job.n_map += len(page)
                await pace()
            await self._jobs.insert_one(
                {"_id": job.id, "spec": spec.to_dict(), "state": job.state.value, "created_at": now,
                 "finished_at": None, "n_map": job.n_map, "done_map": 0, "failed_map": 0, "owner": owner,
                 "suspended_at": None}
            )  # fmt: skip
        except BaseException:
            try:
                await self._units.delete_many({"job_id": job.id})
            except Exception:  # what is left belongs to no job: no query finds it
                log.warning("units of the job %s that was not made are left behind", job.id, exc_info=True)
            raise
        self._specs[job.id], self._owners[job.id] = spec, owner
        return job

    @guard
    async def control_job(self, job_id: str, verb: Verb, now: float) -> Job:
        """The job's compare-and-set on its state first, then each open unit's on its version
        (MongoDB has no transaction here): a master that fails between them leaves units
        behind their job, which the same verb, repeated, brings along."""
        for _ in range(CAS_TRIES):
            job = self._job_from(await self._job_doc(job_id))
            control = on_job_control(job.id, job.state, job.suspended_at, await self.unit_counts(job_id), verb, now)
            finished = {"finished_at": job.finished_at or now} if control.state in TERMINAL_JOB else {}
            moved = await self._jobs.update_one(
                {"_id": job.id, "state": job.state.value},
                {"$set": {"state": control.state.value, "suspended_at": control.suspended_at, **finished}},
            )
            if moved.matched_count:
                break
        else:
            raise StoreUnavailable(f"job {job_id} is changing too often, try again")
        await self._count(list(control.events))
        self.events.publish(list(control.events))
        query = {"job_id": job_id, "state": {"$in": [s.value for s in UnitState if s not in TERMINAL_UNIT]}}
        async for doc in self._units.find(query).sort("idx", ASCENDING):
            await self._control_unit(doc, control, now)
        return self._job_from(await self._job_doc(job_id))

    @guard
    async def get_job(self, job_id: str) -> Job:
        return self._job_from(await self._job_doc(job_id))

    @guard
    async def list_jobs(self, limit: int = 100, owner: str | None = None) -> list[Job]:
        if limit <= 0:
            return []
        query = {"owner": owner} if owner is not None else {}
        docs = await self._jobs.find(query).sort("created_at", DESCENDING).limit(limit).to_list(None)
        return [self._job_from(doc) for doc in docs]

    @guard
    async def unit_counts(self, job_id: str) -> dict[str, int]:
        await self._job_doc(job_id)
        pipeline = [{"$match": {"job_id": job_id}}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        cursor: Any = self._units.aggregate(pipeline)
        if inspect.isawaitable(cursor):  # PyMongo's aggregate is a coroutine; Motor-style stand-ins' is not
            cursor = await cursor
        return ZERO_COUNTS | {row["_id"]: row["n"] for row in await cursor.to_list(None)}

    @guard
    async def list_units(self, job_id: str, offset: int = 0, limit: int = 100) -> list[Unit]:
        await self._job_doc(job_id)
        if limit <= 0:
            return []
        query = {"job_id": job_id, "idx": {"$gte": max(0, offset)}}
        cursor = self._units.find(query, NO_HISTORY).sort("idx", ASCENDING).limit(limit)
        return [_unit_from(doc) for doc in await cursor.to_list(None)]

    @guard
    async def list_outputs(self, job_id: str, offset: int = 0, limit: int = 100) -> list[Output]:
        await self._job_doc(job_id)
        if limit <= 0:
            return []
        query = {"job_id": job_id, "idx": {"$gte": max(0, offset)}}
        fields = {"idx": 1, "kind": 1, "canonical_hash": 1, "canonical_size": 1}
        cursor = self._units.find(query, fields).sort("idx", ASCENDING).limit(limit)
        return [Output(d["idx"], d["kind"], d.get("canonical_hash"), d.get("canonical_size")) async for d in cursor]

    @guard
    async def list_unit_attempts(self, unit_ids: list[str]) -> dict[str, list[Attempt]]:
        found: dict[str, list[Attempt]] = {}
        async for doc in self._units.find({"_id": {"$in": unit_ids}}, {"job_id": 1, "attempts": 1}):
            if doc["attempts"]:
                found[doc["_id"]] = sorted((_attempt_from(a, doc) for a in doc["attempts"]), key=lambda a: a.leased_at)
        return found

    @guard
    async def list_attempts(self, unit_id: str) -> list[Attempt]:
        doc = await self._units.find_one({"_id": unit_id}, {"job_id": 1, "attempts": 1})
        if doc is None:
            return []
        return sorted((_attempt_from(a, doc) for a in doc["attempts"]), key=lambda a: a.leased_at)

    @guard
    async def shares(self) -> dict[str, Share]:
        return {doc["_id"]: Share(doc["running"], doc["usage"], doc["at"]) async for doc in self._shares.find()}

    @guard
    async def activity(self, since: float) -> list[Tally]:
        first = minute_of(since)
        rows = await self._activity.find({"minute": {"$gte": first}}).to_list(None)
        clients = await self._active.find({"_id": {"$gte": first}}).to_list(None)
        return [Tally(r["minute"], r["job"], r["counter"], r["n"]) for r in rows] + [
            Tally(doc["_id"], "", "clients", len(doc["clients"])) for doc in clients
        ]

    # -- clients -------------------------------------------------------------------------
    @guard
    async def register_client(
        self, name: str, slots: int, host: HostFacts, now: float, account: str, token_hash: str
    ) -> Client:
        """The key goes in first: a client document never exists without the means to use it."""
        client = Client(new_id(8), name, now, now, account=account, slots=slots, host=host)
        await self.add_key(client_key(client, token_hash))
        await self._clients.insert_one(
            {"_id": client.id, "name": name, "registered_at": now, "last_seen": now, "slots": slots, "busy": 0,
             "host": host.to_wire(), "containers": [], "valid": 0, "invalid": 0, "errors": 0, "account": account,
             "streak": 0, "contradicted": 0, "found_out": None}
        )  # fmt: skip
        return client

    @guard
    async def get_client(self, client_id: str) -> Client:
        doc = await self._clients.find_one({"_id": client_id})
        if doc is None:
            raise NotFound(f"no client {client_id!r:.40}; register again")
        return _client_from(doc)

    @guard
    async def list_clients(self) -> list[Client]:
        docs = await self._clients.find().sort([("name", ASCENDING), ("_id", ASCENDING)]).to_list(None)
        return [_client_from(doc) for doc in docs]

    @guard
    async def heartbeat(self, client_id: str, beat: Heartbeat, now: float) -> list[tuple[Action, str]]:
        containers = [c.to_wire() for c in beat.containers]
        changes = {"last_seen": now, "slots": beat.slots, "busy": beat.busy, "containers": containers,
                   "memory": beat.memory, "gpus": beat.gpus, "disk": beat.disk}  # fmt: skip
        if not (await self._clients.update_one({"_id": client_id}, {"$set": changes})).matched_count:
            raise NotFound(f"no client {client_id!r:.40}; register again")
        running = running_of(beat)
        if not running:
            return []
        units = await self._units.find({"attempts.id": {"$in": list(running)}}, {"state": 1, "attempts": 1}).to_list(
            None
        )
        found = {a["id"]: (_attempt_snap(a), UnitState(u["state"])) for u in units for a in u["attempts"]}
        return commands(client_id, running, found, beat.paused)

    # -- attempts ------------------------------------------------------------------------
    @guard
    async def lease(
        self, client_id: str, request: LeaseRequest, now: float, policy: LeasePolicy, network: str = ""
    ) -> list[Grant]:
        grants: list[Grant] = []
        if request.max_units <= 0:
            return grants
        client = await self._clients.find_one_and_update(
            {"_id": client_id}, {"$set": {"last_seen": now}},
            projection={"host.arch": 1, "account": 1, "slots": 1, **RECORD},
        )  # fmt: skip
        if client is None:
            raise NotFound(f"no client {client_id!r:.40}; register again")
        record = _record(client)
        if policy.quarantined(record):
            return grants
        trusted = policy.trusted(record, is_stranger(client.get("account", "")))
        leased = await self._units.count_documents(
            {"attempts": {"$elemMatch": {"client": client_id, "state": AttemptState.LEASED.value}}}
        )
        wanted = min(request.max_units, policy.room(client["slots"], leased))
        holder = Holder(client_id, replica_account(client.get("account", "")), network)
        room, scheduler = Room.of(request, client.get("host", {}).get("arch", "")), self.scheduler
        shares = await self.shares()
        candidates = []
        async for doc in self._jobs.find({"state": JobState.RUNNING.value}, {"owner": 1, "created_at": 1}):
            job_id = doc["_id"]
            candidates.append(Candidate(job_id, doc.get("owner", ""), (await self._spec(job_id)).priority,
                                        doc["created_at"]))  # fmt: skip
        units = _Leasable(self._units, holder, wanted + 4)
        charges: dict[str, tuple[int, float]] = {}
        while len(grants) < wanted:
            admitted = [c for c in candidates if scheduler.admits(c.owner, shares)]
            if not admitted:
                break
            job = scheduler.pick(admitted, shares, now)
            spec = await self._spec(job.job)
            doc = await units.next(job.job) if room.fits(spec) else None
            if doc is None:  # none left for this client, or too big for what is left (it only shrinks)
                candidates.remove(job)
                continue
            alone = policy.alone(spec.redundancy, UnitState(doc["state"]), doc["wanted"], trusted, draw)
            change = await self._lease_one(doc, holder, now, policy.deadline(now, spec.resources.timeout), alone)
            if change is None:  # another master got there first
                continue
            unit = _unit_from(doc)
            room.take(spec)
            assert change.lease is not None
            grants.append(grant(unit.job, spec, unit, change.lease.id, change.lease.deadline))
            running, usage = charge(change, spec)
            scheduler.add(shares.setdefault(job.owner, Share(at=now)), running, usage, now)
            before = charges.get(job.owner, (0, 0.0))
            charges[job.owner] = (before[0] + running, before[1] + usage)
        for owner, (running, usage) in charges.items():
            await self._account(owner, running, usage, now)
        return grants

    @guard
    async def record_results(self, client_id: str, reports: list[ResultReport], now: float) -> list[Ack]:
        refused = self.policy.quarantined(await self._touch(client_id, now))
        if refused:
            return [Ack(report.attempt, False, f"result not taken: {refused}") for report in reports]
        docs = await self._units_of([report.attempt for report in reports])
        return [await _ack(r.attempt, self._record(client_id, r, now, docs.get(r.attempt))) for r in reports]

    @guard
    async def release(self, client_id: str, attempt_ids: list[str], now: float) -> list[Ack]:
        await self._touch(client_id, now)
        docs = await self._units_of(attempt_ids)
        return [await _ack(a, self._release(client_id, a, now, docs.get(a))) for a in attempt_ids]

    async def _units_of(self, attempt_ids: list[str]) -> dict[str, Doc]:
        """The unit of each attempt, read together (a round trip per _IN_LIMIT attempts, not one
        each). A unit two of them share is changed by the first and, its version moved, read
        again by the second (``_change``)."""
        wanted, docs = list(dict.fromkeys(attempt_ids)), dict[str, Doc]()
        for low in range(0, len(wanted), _IN_LIMIT):
            ids = wanted[low : low + _IN_LIMIT]
            asked = set(ids)
            for doc in await self._units.find({"attempts.id": {"$in": ids}}).to_list(None):
                docs |= {a["id"]: doc for a in doc["attempts"] if a["id"] in asked}
        return docs

    @guard
    async def expire(self, now: float, policy: LeasePolicy) -> int:
        silent_docs = self._clients.find({"last_seen": {"$lt": now - policy.heartbeat_timeout}}, {"_id": 1})
        silent = {doc["_id"] for doc in await silent_docs.to_list(None)}
        late = {"state": AttemptState.LEASED.value, "deadline": {"$lt": now}}
        # a suspended unit's leases do not expire by their deadline (on_expire)
        suspended = UnitState.SUSPENDED.value
        docs = await self._units.find({"state": {"$ne": suspended}, "attempts": {"$elemMatch": late}}).to_list(None)
        if silent:
            lost = {"state": AttemptState.LEASED.value, "client": {"$in": sorted(silent)}}
            docs += await self._units.find({"attempts": {"$elemMatch": lost}}).to_list(None)
        expired, seen = 0, set()
        for doc in docs:
            if doc["_id"] not in seen:
                seen.add(doc["_id"])
                expired += await self._expire_unit(doc, now, frozenset(silent))
        return expired

    # -- one unit, compare-and-set ------------------------------------------------------------
    async def _lease_one(self, doc: Doc, holder: Holder, now: float, deadline: float, alone: bool) -> UnitChange | None:
        """Add one attempt for this holder to the unit, unless another master got there first
        and the unit no longer wants one (or already has one of this holder's)."""
        attempt_id = new_id(8)
        keys = _keys(holder)
        leasable = {**OPEN, "clients": {"$nin": keys}}
        for _ in range(CAS_TRIES):
            unit = _unit_from(doc)
            change = on_lease(_snap(doc), holder.client, attempt_id, now, deadline, alone)
            result = await self._units.update_one(
                {"_id": unit.id, "version": doc["version"], **leasable},
                {"$set": {"state": change.state.value, "wanted": change.wanted}, "$inc": {"version": 1},
                 "$push": {"attempts": _new_attempt(change, holder), "clients": {"$each": keys}}},
            )  # fmt: skip
            if result.matched_count:
                return change
            doc = await self._units.find_one({"_id": unit.id, **leasable}, NO_HISTORY)
            if doc is None:
                return None
        return None

    async def _record(self, client_id: str, report: ResultReport, now: float, doc: Doc | None) -> Ack:
        async def event(doc: Doc) -> UnitChange | None:
            spec = await self._spec(doc["job_id"])
            return on_result(spec.redundancy, _snap(doc), client_id, report, now)

        return await self._change(report.attempt, doc, event, now, "duplicate")

    async def _release(self, client_id: str, attempt_id: str, now: float, doc: Doc | None) -> Ack:
        async def event(doc: Doc) -> UnitChange | None:
            spec = await self._spec(doc["job_id"])
            return on_release(spec.redundancy, _snap(doc), client_id, attempt_id, now)

        return await self._change(attempt_id, doc, event, now, "already released")

    async def _change(
        self, attempt_id: str, doc: Doc | None, event: Callable[[Doc], Awaitable[UnitChange | None]], now: float,
        unchanged: str,
    ) -> Ack:  # fmt: skip
        """Ask the lifecycle about the unit of an attempt (``doc``, as loaded), write the answer
        as a compare-and-set on its version; read it again and ask again on a miss."""
        for _ in range(CAS_TRIES):
            if doc is None:
                raise NotFound(f"attempt {attempt_id!r:.40} is unknown or was leased to another client")
            change = await event(doc)
            if change is None:
                return Ack(attempt_id, True, unchanged)
            if await self._write(doc, change, now):
                return Ack(attempt_id, True)
            doc = await self._units.find_one({"_id": doc["_id"]})
        raise StoreUnavailable(f"unit of attempt {attempt_id} is changing too often, try again")

    async def _control_unit(self, doc: Doc | None, control: JobControl, now: float) -> None:
        for _ in range(CAS_TRIES):
            if doc is None:
                return
            change = on_control(_snap(doc), control)
            if change is None or await self._write(doc, change, now):
                return
            doc = await self._units.find_one({"_id": doc["_id"]})
        raise StoreUnavailable(f"unit {doc and doc['_id']} is changing too often; {control.verb} the job again")

    async def _expire_unit(self, doc: Doc | None, now: float, silent: frozenset[str]) -> int:
        for _ in range(CAS_TRIES):
            if doc is None:
                return 0
            spec = await self._spec(doc["job_id"])
            change = on_expire(spec.redundancy, _snap(doc), now, silent)
            if change is None:
                return 0  # another master expired them first
            if await self._write(doc, change, now):
                return sum(1 for e in change.events if e.kind == EventKind.LEASE_EXPIRED)
            doc = await self._units.find_one({"_id": doc["_id"]})
        return 0  # left for the next round of the reaper

    async def _write(self, doc: Doc, change: UnitChange, now: float) -> bool:
        """Write a change as a compare-and-set on the unit's version; then the clients'
        counters and what follows for the job. False when another master changed it first."""
        attempts = _updated(doc["attempts"], change)
        result = await self._units.update_one(
            {"_id": doc["_id"], "version": doc["version"]},
            {"$set": {"state": change.state.value, "wanted": change.wanted, "canonical_hash": change.canonical_hash,
                      "canonical_size": change.canonical_size, "attempts": attempts, "clients": _holders(attempts)},
             "$inc": {"version": 1}},
        )  # fmt: skip
        if not result.matched_count:
            return False
        for inc, client_ids in (({"errors": 1}, change.errors), ({"valid": 1, "streak": 1}, change.valid),
                                ({"valid": 1, "invalid": -1}, change.cleared)):  # fmt: skip
            if client_ids:
                await self._clients.update_many({"_id": {"$in": list(client_ids)}}, {"$inc": inc})
        for client_id, invalid in [(c, True) for c in change.invalid] + [(c, False) for c in change.contradicted]:
            judged = {"$inc": {"invalid": 1}, "$set": {"streak": 0}} if invalid else {"$inc": {"contradicted": 1}}
            before = _record(await self._clients.find_one_and_update({"_id": client_id}, judged, RECORD) or {})
            if self.policy.found_out(before, before.judged(invalid)):
                await self._clients.update_one({"_id": client_id}, {"$set": {"found_out": now}})
        events = list(change.events)
        running, usage = charge(change, await self._spec(change.job))
        if running or usage:
            await self._account(await self._owner(change.job), running, usage, now)
        if change.ended:
            events += await self._unit_ended(change, now)
        elif change.reopened:
            events += await self._unit_reopened(change, now)
        await self._count(events)
        self.events.publish(events)
        return True

    async def _account(self, owner: str, running: int, usage: float, now: float) -> None:
        """Move an owner's share: a compare-and-set on its time (decay makes it no plain $inc)."""
        for _ in range(CAS_TRIES):
            doc = await self._shares.find_one({"_id": owner})
            share = Share(doc["running"], doc["usage"], doc["at"]) if doc else Share(at=now)
            self.scheduler.add(share, running, usage, now)
            new = {
                "running": share.running,
                "usage": share.usage,
                "at": share.at,
                "version": (doc or {}).get("version", 0) + 1,
            }
            if doc is None:
                with contextlib.suppress(DuplicateKeyError):
                    await self._shares.insert_one({"_id": owner, **new})
                    return
            elif (
                await self._shares.update_one({"_id": owner, "version": doc["version"]}, {"$set": new})
            ).matched_count:
                return
        log.warning("the share of %s is changing too often; this change is not counted in it", owner)

    async def _count(self, events: list[Event]) -> None:
        """The activity counters, after the change they count (MongoDB has no transaction here)."""
        for (minute, job, counter), n in tally(events).items():
            with contextlib.suppress(DuplicateKeyError):  # two masters upserting the first count: retry once
                await self._activity.update_one({"minute": minute, "job": job, "counter": counter},
                                                {"$inc": {"n": n}}, upsert=True)  # fmt: skip
                continue
            await self._activity.update_one({"minute": minute, "job": job, "counter": counter}, {"$inc": {"n": n}})
        for minute, client in active(events):
            await self._active.update_one({"_id": minute}, {"$addToSet": {"clients": client}}, upsert=True)

    async def _unit_ended(self, change: UnitChange, now: float) -> tuple[Event, ...]:
        """Count a finished map unit in its job; create the reduce unit or end the job when
        that was the last one. Only the master whose ``$inc`` completed the count goes on, and
        no reduce unit exists before that, so a map unit's end never needs to look for one."""
        job = await self._count_in_job(change, 1)
        step = on_unit_ended(job_counts(job), change, now)
        if step.step == JobStep.REDUCE:
            maps = self._units.find({"job_id": job.id, "kind": UnitKind.MAP.value}, NO_HISTORY).sort("idx", ASCENDING)
            inputs = reduce_inputs([_unit_from(d) for d in await maps.to_list(None)])
            with contextlib.suppress(DuplicateKeyError):  # the unique (job_id, idx) index keeps it to one
                await self._units.insert_one(_new_unit(job, job.n_map, UnitKind.REDUCE, inputs))
        elif step.state is not None:
            await self._jobs.update_one(
                {"_id": job.id, "state": job.state.value}, {"$set": {"state": step.state.value, "finished_at": now}}
            )
        return step.events

    async def _count_in_job(self, change: UnitChange, by: int) -> Job:
        """The job of a unit that ended (``by`` 1) or reopened (-1), its counter of map units moved."""
        counter = count_into_job(change)
        if counter is not None:
            job_doc = await self._jobs.find_one_and_update(
                {"_id": change.job}, {"$inc": {counter: by}}, return_document=ReturnDocument.AFTER
            )
        else:
            job_doc = await self._jobs.find_one({"_id": change.job})
        if job_doc is None:
            raise NotFound(f"no job {change.job!r:.40}")
        return self._job_from(job_doc)

    async def _unit_reopened(self, change: UnitChange, now: float) -> tuple[Event, ...]:
        job = await self._count_in_job(change, -1)
        step = on_unit_reopened(job_counts(job), change, now)
        if step.step == JobStep.REDO:
            reduce = await self._units.find_one_and_delete({"job_id": job.id, "kind": UnitKind.REDUCE.value})
            if reduce is not None:
                running, usage = charge(on_dropped(_snap(reduce)), job.spec)
                await self._account(job.owner, running, usage, now)
        if step.state is not None:
            await self._jobs.update_one(
                {"_id": job.id, "state": job.state.value}, {"$set": {"state": step.state.value, "finished_at": None}}
            )
        return step.events

    @guard
    async def revalidate(self, now: float, limit: int = REVALIDATE_SLICE) -> int:
        decided = 0
        async for client in self._clients.find({"found_out": {"$ne": None}}, {"found_out": 1, **RECORD}):
            client_id, found_out = client["_id"], client["found_out"]
            quarantined = bool(self.policy.quarantined(_record(client)))
            held = [{"state": AttemptState.LEASED.value}] if quarantined else []
            votes = {"client": client_id, "leased_at": {"$lte": found_out}, "$or": [
                {"state": AttemptState.SUCCEEDED.value, "validity": {"$in": [None, Validity.VALID.value]}},
                {"alone": True, "state": {"$in": [AttemptState.LEASED.value, AttemptState.TIMED_OUT.value]}}, *held,
            ]}  # fmt: skip
            docs = await self._units.find({"attempts": {"$elemMatch": votes}}).limit(limit - decided).to_list(None)
            for doc in docs:
                decided += 1
                for _ in range(CAS_TRIES):
                    job = self._job_from(await self._job_doc(doc["job_id"]))
                    if job.state in (JobState.FAILED, JobState.CANCELLED):
                        break  # its result is not wanted any more
                    change = on_found_out(job.spec.redundancy, _snap(doc), client_id, job.state, now, quarantined)
                    if change is None or await self._write(doc, change, now):
                        break
                    doc = await self._units.find_one({"_id": doc["_id"]})
                    if doc is None:
                        break
            if decided >= limit:
                break
            await self._clients.update_one({"_id": client_id, "found_out": found_out}, {"$set": {"found_out": None}})
        return decided

    # -- reads ----------------------------------------------------------------------------
    async def _touch(self, client_id: str, now: float) -> Record:
        """Mark the client seen; its record."""
        doc = await self._clients.find_one_and_update({"_id": client_id}, {"$set": {"last_seen": now}}, RECORD)
        if doc is None:
            raise NotFound(f"no client {client_id!r:.40}; register again")
        return _record(doc)

    async def _job_doc(self, job_id: str) -> Doc:
        doc = await self._jobs.find_one({"_id": job_id})
        if doc is None:
            raise NotFound(f"no job {job_id!r:.40}")
        return doc

    async def _owner(self, job_id: str) -> str:
        owner = self._owners.get(job_id)
        if owner is None:
            owner = self._job_from(await self._job_doc(job_id)).owner
        return owner

    async def _spec(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            spec = self._job_from(await self._job_doc(job_id)).spec
        return spec

    def _job_from(self, doc: Doc) -> Job:
        self._owners[doc["_id"]] = doc.get("owner", "")
        spec = self._specs.get(doc["_id"])
        if spec is None:
            spec = self._specs[doc["_id"]] = parse_jobfile(doc["spec"])
        return Job(
            id=doc["_id"], spec=spec, state=JobState(doc["state"]), created_at=doc["created_at"],
            finished_at=doc["finished_at"], owner=doc.get("owner", ""), n_map=doc["n_map"],
            done_map=doc["done_map"], failed_map=doc["failed_map"], suspended_at=doc.get("suspended_at"),
        )  # fmt: skip


async def _ack(attempt_id: str, work: Awaitable[Ack]) -> Ack:
    """One report's answer: what the work returned, or the refusal with its reason."""
    try:
        return await work
    except ServerError as exc:
        return Ack(attempt_id, False, str(exc))


def _new_unit(job: Job, idx: int, kind: str, inputs: list[InputFile]) -> Doc:
    return {
        "_id": f"{job.id}.{idx}", "job_id": job.id, "idx": idx, "kind": kind,
        "state": unit_start_state(job.state).value, "wanted": initial_wanted(job.spec.redundancy),
        "priority": job.spec.priority, "job_created": job.created_at,
        "inputs": [{"name": f.name, "hash": f.hash, "size": f.size} for f in inputs],
        "canonical_hash": None, "canonical_size": None, "version": 0, "clients": [], "attempts": [],
    }  # fmt: skip


class _Leasable:
    """The units of each job this client may lease, in order, read a page at a time; each
    page starts past the last unit read, so units tried (granted or lost to another master) are
    not read again."""

    def __init__(self, units: Any, holder: Holder, page: int) -> None:
        self.units, self.keys, self.page = units, _keys(holder), page
        self._docs: dict[str, list[Doc]] = {}
        self._after: dict[str, int] = {}
        self._more: dict[str, bool] = {}

    async def next(self, job_id: str) -> Doc | None:
        docs = self._docs.setdefault(job_id, [])
        if not docs and self._more.get(job_id, True):
            query = {
                **OPEN,
                "job_id": job_id,
                "idx": {"$gt": self._after.get(job_id, -1)},
                "clients": {"$nin": self.keys},
            }
            docs += await self.units.find(query, NO_HISTORY).sort("idx", ASCENDING).limit(self.page).to_list(None)
            self._more[job_id] = len(docs) == self.page
            if docs:
                self._after[job_id] = docs[-1]["idx"]
        return docs.pop(0) if docs else None


def _unit_from(doc: Doc) -> Unit:
    return Unit(
        id=doc["_id"], job=doc["job_id"], idx=doc["idx"], kind=doc["kind"], state=UnitState(doc["state"]),
        wanted=doc["wanted"], inputs=[InputFile(f["name"], f["hash"], f["size"]) for f in doc["inputs"]],
        canonical_hash=doc.get("canonical_hash"), canonical_size=doc.get("canonical_size"),
    )  # fmt: skip


def _attempt_from(a: Doc, unit: Doc) -> Attempt:
    return Attempt(
        id=a["id"], unit=unit["_id"], job=unit["job_id"], client=a["client"], state=AttemptState(a["state"]),
        leased_at=a["leased_at"], deadline=a["deadline"], finished_at=a["finished_at"],
        output_hash=a["output_hash"], output_size=a["output_size"], exit_code=a["exit_code"], error=a["error"],
        stderr_tail=a["stderr_tail"], runtime=a["runtime"], peak_memory=a["peak_memory"],
        validity=Validity(a["validity"]) if a["validity"] else None,
    )  # fmt: skip


def _client_from(doc: Doc) -> Client:
    return Client(
        id=doc["_id"], name=doc["name"], registered_at=doc["registered_at"], last_seen=doc["last_seen"],
        account=doc.get("account", ""), slots=doc["slots"], busy=doc["busy"], host=HostFacts.from_wire(doc["host"]),
        containers=doc["containers"], valid=doc["valid"], invalid=doc["invalid"], errors=doc["errors"],
        memory=doc.get("memory", 0), gpus=doc.get("gpus", 0), disk=doc.get("disk", 0),
        streak=doc.get("streak", 0), contradicted=doc.get("contradicted", 0),
    )  # fmt: skip


def _record(doc: Doc) -> Record:
    return Record(doc.get("valid", 0), doc.get("invalid", 0), doc.get("streak", 0), doc.get("contradicted", 0))


def _snap(doc: Doc) -> UnitSnap:
    return UnitSnap(
        doc["_id"], doc["job_id"], doc["kind"], UnitState(doc["state"]), doc["wanted"],
        tuple(_attempt_snap(a) for a in doc.get("attempts", ())),
    )  # fmt: skip


def _attempt_snap(a: Doc) -> AttemptSnap:
    return AttemptSnap(
        a["id"], a["client"], AttemptState(a["state"]), a["output_hash"], a["output_size"], a["error"],
        Validity(a["validity"]) if a["validity"] else None, a["deadline"], a.get("account", ""), a.get("network", ""),
        a.get("alone", False),
    )  # fmt: skip


def _new_attempt(change: UnitChange, holder: Holder) -> Doc:
    lease = change.lease
    assert lease is not None
    return {"id": lease.id, "client": lease.client, "account": holder.account, "network": holder.network,
            "state": AttemptState.LEASED.value, "leased_at": lease.leased_at,
            "deadline": lease.deadline, "finished_at": None, "output_hash": None, "output_size": None,
            "exit_code": None, "error": None, "stderr_tail": "", "runtime": None, "peak_memory": None,
            "validity": None, "alone": lease.alone}  # fmt: skip


def _updated(attempts: list[Doc], change: UnitChange) -> list[Doc]:
    """The unit's attempts with the change's updates applied (None keeps a value)."""
    updates = {u.id: u for u in change.attempts}
    out = []
    for a in attempts:
        update = updates.get(a["id"])
        if update is not None:
            a = dict(a)
            if update.result is not None:
                r = update.result
                succeeded = r.status == ResultStatus.SUCCEEDED
                a.update(
                    output_hash=r.output_hash if succeeded else None, output_size=r.output_size if succeeded else None,
                    exit_code=r.exit_code, error=None if r.error is None else r.error.value,
                    stderr_tail=r.stderr_tail[-STDERR_TAIL:], runtime=r.runtime, peak_memory=r.peak_memory,
                )  # fmt: skip
            for name in ("state", "finished_at", "validity", "deadline", "alone"):
                value = getattr(update, name)
                if value is not None:
                    a[name] = value.value if isinstance(value, StrEnum) else value
        out.append(a)
    return out


def _keys(holder: Holder) -> list[str]:
    """What a unit's ``clients`` list holds of a holder: its client id, "a:" its account and
    "n:" its network (client ids have no colon)."""
    return [holder.client] + [f"{tag}:{key}" for tag, key in (("a", holder.account), ("n", holder.network)) if key]


def _holders(attempts: list[Doc]) -> list[str]:
    """The keys of the holders a unit may not be leased to again (lifecycle.barred)."""
    history: dict[str, list[tuple[AttemptState, str | None]]] = {}
    for a in attempts:
        for key in _keys(Holder(a["client"], a.get("account", ""), a.get("network", ""))):
            history.setdefault(key, []).append((AttemptState(a["state"]), a["error"]))
    return [key for key, ended in history.items() if barred(ended)]
