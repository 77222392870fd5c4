"""One contract for every Store backend: each test runs on SQLite and on MongoDB.

MongoDB means a real server when DOCKERCOMP_TEST_MONGO_URL is set (a fresh database per test,
dropped afterwards), else the mongomock-motor stand-in; the test id says which
(``mongodb-server`` or ``mongodb-mongomock``). Tests pass ``now`` explicitly, so nothing
sleeps, and each runs in one ``asyncio.run`` because a Mongo client belongs to one loop.
"""

import asyncio
import inspect
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import JobSpec, params_json, parse_jobfile
from dockercomp.protocol.messages import (
    Ack,
    Action,
    ContainerInfo,
    ErrorKind,
    Heartbeat,
    HostFacts,
    LeaseRequest,
    ResultReport,
)
from dockercomp.protocol.signing import Signed
from dockercomp.server.auth import Key, Role, token_hash
from dockercomp.server.blobs import BlobStore, DirectoryBlobStore
from dockercomp.server.errors import Conflict, NotFound
from dockercomp.server.lifecycle import AttemptState, EventKind, JobState, LeasePolicy, UnitState, Validity
from dockercomp.server.models import Image, Layer
from dockercomp.server.store.base import Store, map_inputs, sweep_inputs
from dockercomp.server.store.sqlite import SQLiteStore
from tests.needs import skip_or_fail

MONGO_URL = os.environ.get("DOCKERCOMP_TEST_MONGO_URL", "")
MONGO_TARGET = "server" if MONGO_URL else "mongomock"
T0 = 1_000_000.0
POLICY = LeasePolicy(slack=10.0, heartbeat_timeout=30.0)


class Backend:
    """One backend for one test: ``store`` and ``blobs`` are open while the test runs, and
    ``another()`` opens a second Store on the same data, as a second master would."""

    store: Store
    blobs: BlobStore

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self._stores: list[Store] = []
        self._cleanup: list[Callable[[], Awaitable[Any]]] = []
        self._make: Callable[[], Store] = lambda: SQLiteStore(str(tmp_path / "store.db"))

    async def another(self) -> Store:
        store = self._make()
        await store.open()
        self._stores.append(store)
        return store

    def run(self, test: Callable[["Backend"], Awaitable[None]]) -> None:
        asyncio.run(self._run(test))

    async def _run(self, test: Callable[["Backend"], Awaitable[None]]) -> None:
        try:
            if self.name == "sqlite":
                self.blobs = DirectoryBlobStore(str(self.tmp_path / "blobs"))
            else:
                await self._mongo()
            self.store = await self.another()
            await test(self)
        finally:
            for store in self._stores:
                await store.close()
            for step in reversed(self._cleanup):
                await step()

    async def _mongo(self) -> None:
        from dockercomp.server.store.mongo import GridFSBlobStore, MongoStore

        if MONGO_URL:
            from pymongo import AsyncMongoClient

            name = f"dockercomp_test_{secrets.token_hex(6)}"
            first: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
            self._cleanup += [first.close, lambda: first.drop_database(name)]
            self.blobs = GridFSBlobStore(first[name])

            def make() -> Store:  # each master has its own client
                client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
                self._cleanup.append(client.close)
                return MongoStore(client[name])

            self._make = make
        else:
            from mongomock_motor import AsyncMongoMockClient

            database = Yielding(AsyncMongoMockClient()["dockercomp"])
            self.blobs = GridFSBlobStore(database)
            self._make = lambda: MongoStore(database)


class Yielding:
    """A mongomock-motor database whose calls yield to the event loop once, as a round trip
    to a real server does, so concurrent tasks interleave between reads and writes."""

    def __init__(self, database: Any) -> None:
        self._database = database

    def get_collection(self, name: str) -> "YieldingCollection":
        return YieldingCollection(self._database[name])

    __getitem__ = get_collection


class YieldingCollection:
    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._collection, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return await method(*args, **kwargs)

        return call


@pytest.fixture(params=["sqlite", "mongodb"], ids=["sqlite", f"mongodb-{MONGO_TARGET}"])
def store(request: pytest.FixtureRequest, tmp_path: Path, record_property: Callable[[str, object], None]) -> Backend:
    if request.param == "mongodb":
        try:
            import mongomock_motor  # noqa: F401
        except ImportError:
            if os.environ.get("CI") or MONGO_URL:
                raise
            skip_or_fail("mongomock-motor is not installed (pip install -e '.[test]')")
        record_property("mongodb", MONGO_TARGET)
    return Backend(request.param, tmp_path)


def contract(test: Callable[[Backend], Awaitable[None]]) -> Callable[[Backend], None]:
    """Turn ``async def test_x(b)`` into a test that runs it on the ``store`` fixture."""

    def run(store: Backend) -> None:
        store.run(test)

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


# -- helpers --------------------------------------------------------------------------------


def job_spec(**fields: Any) -> JobSpec:
    return parse_jobfile({"name": "t", "image": "dockercomp/test", "command": ["run"], **fields})


def redundancy(replicas: int, quorum: int, max_attempts: int) -> dict[str, int]:
    return {"replicas": replicas, "quorum": quorum, "max_attempts": max_attempts}


def chunks(n: int, tag: str = "") -> list[list[Any]]:
    return [map_inputs([(digest(f"{tag}chunk{i}".encode()), 10 + i)]) for i in range(n)]


def ok(attempt: str, output: bytes = b"out") -> ResultReport:
    return ResultReport(attempt, "succeeded", exit_code=0, output_hash=digest(output), output_size=len(output))


def failed(attempt: str) -> ResultReport:
    return ResultReport(attempt, "errored", error=ErrorKind.EXIT_NONZERO, exit_code=1, stderr_tail="boom")


async def clients(s: Store, n: int, now: float = T0) -> list[str]:
    return [(await register(s, f"c{i}", 8, HostFacts(cores=8), now)).id for i in range(n)]  # room for 16 leases


async def register(s: Store, name: str, slots: int, host: HostFacts, now: float, account: str = "") -> Any:
    """A client of an account of its own unless told (replicas never go to two of one account)."""
    account = account or f"acct-{name}"
    return await s.register_client(name, slots, host, now, account, token_hash(secrets.token_hex(16)))


async def lease(s: Store, client: str, n: int = 1, now: float = T0, **request: Any) -> list[Any]:
    """Lease up to ``n`` units; the client has room for 16 units of one cpu unless told."""
    request.setdefault("cpus", 16.0)
    return await s.lease(client, LeaseRequest(max_units=n, **request), now, POLICY)


async def one(s: Store, client: str, now: float = T0) -> str:
    (grant,) = await lease(s, client, 1, now)
    return grant.attempt


async def unit_of(s: Store, job_id: str, idx: int = 0) -> Any:
    return (await s.list_units(job_id, idx, 1))[0]


# -- jobs -----------------------------------------------------------------------------------


@contract
async def test_jobs_and_units(b: Backend) -> None:
    s = b.store
    old = await s.create_job(job_spec(name="old"), chunks(3), T0)
    new = await s.create_job(job_spec(name="new", priority=5), chunks(1, "n"), T0 + 1)
    job = await s.get_job(old.id)
    assert (job.id, job.spec, job.state, job.created_at, job.n_map, job.done_map) == (
        old.id, job_spec(name="old"), JobState.RUNNING, T0, 3, 0,
    )  # fmt: skip
    assert [j.id for j in await s.list_jobs()] == [new.id, old.id]
    assert [j.id for j in await s.list_jobs(limit=1)] == [new.id]
    assert await s.unit_counts(old.id) == {state.value: 3 if state == UnitState.READY else 0 for state in UnitState}
    units = await s.list_units(old.id)
    assert [(u.idx, u.kind, u.state, u.wanted) for u in units] == [(i, "map", UnitState.READY, 1) for i in range(3)]
    assert [u.inputs for u in units] == chunks(3)
    assert [u.idx for u in await s.list_units(old.id, offset=1, limit=5)] == [1, 2]
    assert await s.list_attempts(units[0].id) == []
    assert await s.list_attempts("no-such-unit") == []
    for call in (s.get_job("nope"), s.unit_counts("nope"), s.list_units("nope")):
        with pytest.raises(NotFound):
            await call


# -- clients --------------------------------------------------------------------------------


@contract
async def test_clients(b: Backend) -> None:
    s = b.store
    zed = await register(s, "zed", 4, HostFacts(cores=8, memory=1 << 30, os="linux"), T0)
    amy = await register(s, "amy", 1, HostFacts(), T0 + 1)
    got = await s.get_client(zed.id)
    assert (got.name, got.slots, got.host.cores, got.host.os, got.registered_at) == ("zed", 4, 8, "linux", T0)
    assert (got.valid, got.invalid, got.errors, got.reliability) == (0, 0, 0, 1.0)
    assert [c.id for c in await s.list_clients()] == [amy.id, zed.id]
    assert await s.heartbeat(zed.id, Heartbeat(slots=3, busy=1), T0 + 5) == []
    got = await s.get_client(zed.id)
    assert (got.last_seen, got.slots, got.busy, got.containers) == (T0 + 5, 3, 1, [])
    with pytest.raises(NotFound):
        await s.get_client("nope")
    with pytest.raises(NotFound):
        await s.heartbeat("nope", Heartbeat(slots=1), T0)
    with pytest.raises(NotFound):
        await lease(s, "nope")
    with pytest.raises(NotFound):
        await s.record_results("nope", [ok("x")], T0)
    with pytest.raises(NotFound):
        await s.release("nope", ["x"], T0)


@contract
async def test_heartbeat_names_attempts_to_abort(b: Backend) -> None:
    s = b.store
    a, c, d = await clients(s, 3)
    job = await s.create_job(job_spec(redundancy=redundancy(2, 1, 3)), chunks(3), T0)
    kept, released, stale = (g.attempt for g in await lease(s, a, 3))  # units 0, 1, 2
    foreign = await one(s, d)  # unit 0, on another client
    await s.release(a, [released], T0)
    assert await s.expire(T0 + 10_000, POLICY) == 3  # kept, stale, foreign: timed out, still undecided
    for g in await lease(s, c, 3, T0 + 10_001):
        if g.unit == f"{job.id}.2":
            await s.record_results(c, [ok(g.attempt)], T0 + 10_002)  # unit 2 decided without a
    assert (await unit_of(s, job.id, 2)).state == UnitState.DONE
    running = [kept, released, stale, "unknown", foreign]
    beat = Heartbeat(
        slots=2,
        busy=len(running),
        containers=[ContainerInfo(f"c{i:011d}", x, "u", job.id, "img", 1.0, 1 << 20) for i, x in enumerate(running)],
    )
    orders = await s.heartbeat(a, beat, T0 + 10_003)
    assert orders == [(Action.ABORT, x) for x in (released, stale, "unknown", foreign)]
    assert (await s.get_client(a)).containers[0]["attempt"] == kept


# -- leases ---------------------------------------------------------------------------------


@contract
async def test_lease_order_batch_and_grant(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    assert await lease(s, a, 5) == []  # nothing to lease yet
    old = await s.create_job(job_spec(name="old"), chunks(2), T0)
    new = await s.create_job(job_spec(name="new"), chunks(2, "n"), T0 + 1)
    urgent = await s.create_job(job_spec(name="urgent", priority=3, env={"K": "v"}), chunks(2, "u"), T0 + 2)
    assert await lease(s, a, 0) == []
    first = await lease(s, a, 3, T0 + 5)
    assert [(g.job, g.unit) for g in first] == [(urgent.id, f"{urgent.id}.0"), (urgent.id, f"{urgent.id}.1"),
                                                (old.id, f"{old.id}.0")]  # fmt: skip
    g = first[0]
    assert (g.kind, g.image, g.command, g.env, g.mode) == ("map", "dockercomp/test", ["run"], {"K": "v"}, "batch")
    assert (g.cpus, g.memory, g.timeout, g.deadline) == (1.0, 256 << 20, 300.0, T0 + 5 + 300 + POLICY.slack)
    chunk = digest(b"uchunk0")
    assert [(i.name, i.hash, i.size, i.url) for i in g.inputs] == [("chunk", chunk, 10, f"/api/v1/blobs/{chunk}")]
    assert len({g.attempt for g in first}) == 3
    rest = await lease(s, a, 10, T0 + 6)
    assert [g.unit for g in rest] == [f"{old.id}.1", f"{new.id}.0", f"{new.id}.1"]
    assert await lease(s, a, 10, T0 + 7) == []
    attempts = await s.list_attempts(f"{old.id}.0")
    assert [(x.id, x.client, x.state, x.leased_at, x.job) for x in attempts] == [
        (first[2].attempt, a, AttemptState.LEASED, T0 + 5, old.id)
    ]
    assert (await unit_of(s, old.id)).state == UnitState.RUNNING
    assert (await s.get_client(a)).last_seen == T0 + 7


@contract
async def test_lease_fits_cpus_and_memory(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    big = await s.create_job(job_spec(resources={"cpus": 2, "memory": "1GiB"}, priority=1), chunks(3), T0)
    small = await s.create_job(job_spec(resources={"cpus": 0.5, "memory": "100MiB"}), chunks(3, "s"), T0)
    assert [g.job for g in await lease(s, a, 5, cpus=1.0, memory=8 << 30)] == [small.id, small.id]
    assert [g.job for g in await lease(s, a, 5, cpus=8.0, memory=200 << 20)] == [small.id]  # big needs 1GiB
    assert (await s.unit_counts(small.id))["running"] == 3
    assert [g.job for g in await lease(s, a, 5, cpus=4.0, memory=2 << 30)] == [big.id, big.id]
    assert (await s.unit_counts(big.id))["ready"] == 1


@contract
async def test_lease_looks_past_jobs_that_do_not_fit(b: Backend) -> None:
    """Jobs ahead in line that the client cannot run never hide the ones it can, however many
    units they have: here more than a page of units needing too much memory, then more than a
    page of jobs needing too many cpus."""
    s = b.store
    a, c = await clients(s, 2)
    first = await s.create_job(job_spec(priority=10), chunks(1, "f"), T0)
    big = await s.create_job(job_spec(resources={"memory": "4GiB"}, priority=9), chunks(100, "b"), T0)
    for i in range(30):
        await s.create_job(job_spec(resources={"cpus": 4}, priority=5), chunks(1, f"w{i}"), T0)
    small = await s.create_job(job_spec(resources={"cpus": 0.5, "memory": "100MiB"}), chunks(5, "s"), T0)
    room = {"cpus": 2.0, "memory": 1 << 30}
    assert [g.unit for g in await lease(s, a, 2, **room)] == [f"{first.id}.0", f"{small.id}.0"]
    assert [g.unit for g in await lease(s, a, 1, **room)] == [f"{small.id}.1"]
    assert [g.unit for g in await lease(s, a, 10, **room)] == [f"{small.id}.{i}" for i in (2, 3, 4)]
    assert await lease(s, a, 10, **room) == []
    assert [g.unit for g in await lease(s, c, 2, memory=8 << 30)] == [f"{big.id}.0", f"{big.id}.1"]
    assert (await s.unit_counts(big.id))["ready"] == 98


@contract
async def test_lease_looks_past_units_the_client_already_had(b: Backend) -> None:
    """A client that holds an attempt of every unit of a big job still gets the units behind
    it, while other clients get the job's second replicas."""
    s = b.store
    a, c = [(await register(s, name, 64, HostFacts(cores=64), T0)).id for name in ("a", "c")]  # room for 128
    hot = await s.create_job(job_spec(redundancy=redundancy(2, 2, 4), priority=9), chunks(100, "h"), T0)
    cold = await s.create_job(job_spec(), chunks(3, "c"), T0)
    for _ in range(10):
        assert {g.job for g in await lease(s, a, 10, cpus=10.0)} == {hot.id}
    assert all(u.wanted == 1 for u in await s.list_units(hot.id))
    assert [g.unit for g in await lease(s, a, 1)] == [f"{cold.id}.0"]
    assert [g.unit for g in await lease(s, a, 5, cpus=5.0)] == [f"{cold.id}.1", f"{cold.id}.2"]
    assert [g.unit for g in await lease(s, c, 2, cpus=2.0)] == [f"{hot.id}.0", f"{hot.id}.1"]


@contract
async def test_replicas_go_to_distinct_clients(b: Backend) -> None:
    s = b.store
    a, c, d = await clients(s, 3)
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 4)), chunks(1), T0)
    assert len(await lease(s, a, 5)) == 1
    assert await lease(s, a, 5) == []  # never twice to one client
    assert len(await lease(s, c, 5)) == 1
    assert await lease(s, d, 5) == []  # both replicas are out
    assert (await unit_of(s, job.id)).wanted == 0
    assert sorted(x.client for x in await s.list_attempts(f"{job.id}.0")) == sorted([a, c])


# -- results --------------------------------------------------------------------------------


@contract
async def test_single_success_finishes_unit_and_job(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    job = await s.create_job(job_spec(), chunks(1), T0)
    attempt = await one(s, a)
    assert [(k.attempt, k.accepted, k.reason) for k in await s.record_results(a, [ok(attempt, b"result")], T0 + 3)] == [
        (attempt, True, "")
    ]
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.canonical_hash, unit.canonical_size) == (UnitState.DONE, digest(b"result"), 6)
    (x,) = await s.list_attempts(unit.id)
    assert (x.state, x.validity, x.output_hash, x.exit_code, x.finished_at) == (
        AttemptState.SUCCEEDED, Validity.VALID, digest(b"result"), 0, T0 + 3,
    )  # fmt: skip
    done = await s.get_job(job.id)
    assert (done.state, done.done_map, done.finished_at) == (JobState.DONE, 1, T0 + 3)
    assert (await s.get_client(a)).valid == 1
    assert (await s.unit_counts(job.id))["done"] == 1


@contract
async def test_acks_for_every_report(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    await s.create_job(job_spec(), chunks(2), T0)
    mine, theirs = await one(s, a), await one(s, c)
    acks = await s.record_results(a, [ok(mine), ok(mine), ok("nope"), ok(theirs)], T0 + 1)
    assert [(k.attempt, k.accepted) for k in acks] == [(mine, True), (mine, True), ("nope", False), (theirs, False)]
    assert (acks[0].reason, acks[1].reason) == ("", "duplicate")
    assert "unknown" in acks[2].reason and "another client" in acks[3].reason
    conflicting = await s.record_results(a, [ok(mine, b"other"), failed(mine)], T0 + 2)
    assert [(k.accepted, "different result" in k.reason) for k in conflicting] == [(False, True), (False, True)]
    released = await s.release(a, ["nope", theirs, mine], T0 + 3)
    assert [k.accepted for k in released] == [False, False, False]  # a finished attempt is not released
    assert (await s.get_client(c)).valid == 0


@contract
async def test_one_batch_ends_a_job(b: Backend) -> None:
    """A request's results are written together: each unit counted once into its job, a unit
    a report changed read again for the next report of it, the job ended by the last one."""
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(redundancy=redundancy(1, 1, 2)), chunks(6), T0)
    grants = await lease(s, a, 6)
    first = grants[0].attempt
    reports = [ok(first), ok(first), failed(grants[1].attempt)] + [ok(g.attempt) for g in grants[2:]]
    acks = await s.record_results(a, reports, T0 + 1)
    assert [(k.accepted, k.reason) for k in acks] == [(True, ""), (True, "duplicate")] + [(True, "")] * 5
    assert ((await s.get_job(job.id)).done_map, (await s.get_job(job.id)).state) == (5, JobState.RUNNING)
    assert ((await s.get_client(a)).valid, (await s.get_client(a)).errors) == (5, 1)
    (again,) = await lease(s, c, 6)  # the failed unit, to another client
    await s.record_results(c, [ok(again.attempt)], T0 + 2)
    done = await s.get_job(job.id)
    assert (done.done_map, done.failed_map, done.state) == (6, 0, JobState.DONE)
    assert (await s.unit_counts(job.id))["done"] == 6


@contract
async def test_replicas_agree(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 3)), chunks(1), T0)
    x, y = await one(s, a), await one(s, c)
    await s.record_results(a, [ok(x)], T0 + 1)
    assert (await unit_of(s, job.id)).state == UnitState.RUNNING  # one vote is not a quorum
    assert (await s.get_job(job.id)).state == JobState.RUNNING
    await s.record_results(c, [ok(y)], T0 + 2)
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.canonical_hash) == (UnitState.DONE, digest(b"out"))
    assert {t.validity for t in await s.list_attempts(unit.id)} == {Validity.VALID}
    assert [(k.valid, k.invalid) for k in (await s.get_client(a), await s.get_client(c))] == [(1, 0), (1, 0)]
    assert (await s.get_job(job.id)).state == JobState.DONE


@contract
async def test_disagreement_goes_to_a_third_client(b: Backend) -> None:
    s = b.store
    a, c, d = await clients(s, 3)
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 3)), chunks(1), T0)
    x, y = await one(s, a), await one(s, c)
    await s.record_results(a, [ok(x, b"right")], T0 + 1)
    await s.record_results(c, [ok(y, b"wrong")], T0 + 2)
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.wanted) == (UnitState.READY, 1)
    assert await lease(s, a) == [] and await lease(s, c) == []
    z = await one(s, d, T0 + 3)
    await s.record_results(d, [ok(z, b"right")], T0 + 4)
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.canonical_hash) == (UnitState.DONE, digest(b"right"))
    validity = {t.client: t.validity for t in await s.list_attempts(unit.id)}
    assert validity == {a: Validity.VALID, c: Validity.INVALID, d: Validity.VALID}
    wrong = await s.get_client(c)
    assert (wrong.valid, wrong.invalid, wrong.reliability) == (0, 1, 0.5)
    assert (await s.get_client(d)).valid == 1


@contract
async def test_errors_are_retried_until_max_attempts(b: Backend) -> None:
    s = b.store
    a, c, d = await clients(s, 3)
    other = await s.create_job(job_spec(name="other"), chunks(1, "o"), T0 - 1)
    job = await s.create_job(job_spec(redundancy=redundancy(1, 1, 2), priority=1), chunks(1), T0)
    await s.record_results(a, [failed(await one(s, a))], T0 + 1)
    (x,) = await s.list_attempts(f"{job.id}.0")
    assert (x.state, x.error, x.exit_code, x.stderr_tail) == (AttemptState.ERRORED, "exit_nonzero", 1, "boom")
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.wanted) == (UnitState.READY, 1)  # retried
    assert (await s.get_client(a)).errors == 1
    retry = await lease(s, c, 1, T0 + 2)
    assert [g.unit for g in retry] == [unit.id]
    await s.record_results(c, [failed(retry[0].attempt)], T0 + 3)
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.wanted) == (UnitState.FAILED, 0)
    failed_job = await s.get_job(job.id)
    assert (failed_job.state, failed_job.failed_map, failed_job.finished_at) == (JobState.FAILED, 1, T0 + 3)
    assert [g.job for g in await lease(s, d, 5)] == [other.id]  # the failed unit is not leased again


@contract
async def test_result_for_decided_unit_is_refused_but_late_result_counts(b: Backend) -> None:
    s = b.store
    a, c, d = await clients(s, 3)
    job = await s.create_job(job_spec(resources={"timeout": 100}), chunks(2), T0)
    slow = await one(s, a)  # unit 0
    assert await s.expire(T0 + 111, POLICY) == 1  # past T0 + timeout + slack
    (x,) = await s.list_attempts(f"{job.id}.0")
    assert (x.state, x.finished_at) == (AttemptState.TIMED_OUT, T0 + 111)
    assert (await s.get_client(a)).errors == 1
    assert await s.expire(T0 + 112, POLICY) == 0
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.wanted) == (UnitState.READY, 1)
    retry = await one(s, c, T0 + 112)  # unit 0 again
    (ack,) = await s.record_results(a, [ok(slow)], T0 + 113)  # late, while undecided: counts
    assert ack.accepted and ack.reason == ""
    assert (await unit_of(s, job.id)).state == UnitState.DONE
    states = {t.id: t.state for t in await s.list_attempts(unit.id)}
    assert states == {slow: AttemptState.SUCCEEDED, retry: AttemptState.RELEASED}  # no longer needed
    (refused,) = await s.record_results(c, [ok(retry)], T0 + 114)
    assert not refused.accepted and "released" in refused.reason
    # unit 1: a timed-out attempt whose unit another client finished meanwhile
    late = await one(s, d, T0 + 200)
    await s.expire(T0 + 1000, POLICY)
    await s.record_results(a, [ok(await one(s, a, T0 + 1001))], T0 + 1002)
    (refused,) = await s.record_results(d, [ok(late)], T0 + 1003)
    assert not refused.accepted and "already done" in refused.reason


@contract
async def test_release_reissues_without_spending_attempts(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(redundancy=redundancy(1, 1, 1)), chunks(1), T0)
    x = await one(s, a)
    assert [(k.accepted, k.reason) for k in await s.release(a, [x], T0 + 1)] == [(True, "")]
    assert [(k.accepted, k.reason) for k in await s.release(a, [x], T0 + 2)] == [(True, "already released")]
    unit = await unit_of(s, job.id)
    assert (unit.state, unit.wanted) == (UnitState.READY, 1)
    y = await one(s, c, T0 + 3)  # max_attempts=1, yet it is issued again
    assert [(k.accepted, k.reason) for k in await s.release(c, [y], T0 + 4)] == [(True, "")]
    z = await one(s, a, T0 + 5)  # a gave it back unfinished, so it may have it again
    await s.record_results(a, [ok(z)], T0 + 6)
    assert (await unit_of(s, job.id)).state == UnitState.DONE
    assert (await s.get_client(a)).errors == 0
    assert [t.state for t in await s.list_attempts(unit.id)] == [
        AttemptState.RELEASED, AttemptState.RELEASED, AttemptState.SUCCEEDED,
    ]  # fmt: skip


@contract
async def test_a_released_unit_never_gets_two_live_attempts_on_one_client(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 4)), chunks(1), T0)
    x = await one(s, a)
    assert await lease(s, a) == []  # one live attempt per client and unit
    await s.release(a, [x], T0 + 1)
    y = await one(s, a, T0 + 2)
    assert await lease(s, a) == []
    z = await one(s, c, T0 + 3)
    await s.record_results(a, [ok(y)], T0 + 4)
    await s.record_results(c, [ok(z)], T0 + 5)
    assert (await unit_of(s, job.id)).state == UnitState.DONE


@contract
async def test_expire_by_deadline_and_by_silence(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(resources={"timeout": 100}), chunks(2), T0)
    x, y = await one(s, a), await one(s, c)

    async def states() -> list[AttemptState]:
        return [t.state for i in range(2) for t in await s.list_attempts(f"{job.id}.{i}")]

    await s.heartbeat(a, Heartbeat(slots=1), T0 + 25)
    assert await s.expire(T0 + 29, POLICY) == 0
    assert await s.expire(T0 + 31, POLICY) == 1  # c silent for 31 s > 30 s
    assert await states() == [AttemptState.LEASED, AttemptState.TIMED_OUT]
    assert (await unit_of(s, job.id, 1)).state == UnitState.READY
    await s.heartbeat(a, Heartbeat(slots=1), T0 + 100)
    assert await s.expire(T0 + 109, POLICY) == 0
    assert await s.expire(T0 + 111, POLICY) == 1  # a heartbeats but is past its deadline
    assert await states() == [AttemptState.TIMED_OUT, AttemptState.TIMED_OUT]
    assert await s.expire(T0 + 500, POLICY) == 0
    assert (await s.get_client(a)).errors == 1 and (await s.get_client(c)).errors == 1
    assert [u.wanted for u in await s.list_units(job.id)] == [1, 1]
    assert len({x, y}) == 2


# -- reduce ---------------------------------------------------------------------------------


@contract
async def test_reduce_unit_after_all_maps(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(reduce={"command": ["merge"]}), chunks(3), T0)
    grants = await lease(s, a, 3)
    for i in (2, 0):
        await s.record_results(a, [ok(grants[i].attempt, f"out{i}".encode())], T0 + 1 + i)
    assert len(await s.list_units(job.id)) == 3
    assert await lease(s, c, 5) == []
    await s.record_results(a, [ok(grants[1].attempt, b"out1")], T0 + 5)
    units = await s.list_units(job.id)
    assert len(units) == 4
    red = units[3]
    assert (red.kind, red.idx, red.state, red.wanted) == ("reduce", 3, UnitState.READY, 1)
    assert [(f.name, f.hash, f.size) for f in red.inputs] == [
        (f"{i:06d}", digest(f"out{i}".encode()), 4) for i in range(3)
    ]
    assert (await s.get_job(job.id)).state == JobState.RUNNING
    assert (await s.get_job(job.id)).done_map == 3
    (g,) = await lease(s, c, 5, T0 + 6)
    assert (g.kind, g.command, [i.name for i in g.inputs]) == ("reduce", ["merge"], ["000000", "000001", "000002"])
    await s.record_results(c, [ok(g.attempt, b"total")], T0 + 7)
    done = await s.get_job(job.id)
    assert (done.state, done.finished_at) == (JobState.DONE, T0 + 7)
    assert (await s.unit_counts(job.id))["done"] == 4


# -- blobs ----------------------------------------------------------------------------------


@contract
async def test_blob_store(b: Backend) -> None:
    data = os.urandom(600 * 1024)  # several GridFS chunks
    blob = await b.blobs.put(data)
    assert blob == digest(data) and await b.blobs.put(data) == blob
    assert await b.blobs.size(blob) == len(data)
    assert await b.blobs.read(blob) == data
    for start, end in ((0, 10), (10, 20), (261_000, 262_000), (500_000, None), (len(data) - 1, len(data) + 5)):
        assert await b.blobs.read(blob, start, end) == data[start:end]
    assert await b.blobs.read(blob, len(data) + 1) == b""
    empty = await b.blobs.put(b"")
    assert (await b.blobs.size(empty), await b.blobs.read(empty)) == (0, b"")
    missing = digest(b"never stored")
    assert await b.blobs.size(missing) is None
    with pytest.raises(NotFound):
        await b.blobs.read(missing)


# -- two masters ----------------------------------------------------------------------------


@contract
async def test_two_masters_lease_and_finish_concurrently(b: Backend) -> None:
    first, second = b.store, await b.another()
    ids = await clients(first, 8)
    job = await first.create_job(job_spec(redundancy=redundancy(2, 2, 4), reduce={"command": ["m"]}), chunks(12), T0)

    async def leases(s: Store, client: str) -> list[tuple[str, Any]]:
        return [(client, g) for _ in range(3) for g in await lease(s, client, 2)]

    masters = [first, second]
    calls = [(masters[i % 2], client) for i in range(2) for client in ids]
    if b.name == "sqlite":  # each master on its own thread, as two processes would be

        def in_thread(s: Store) -> Awaitable[list[list[tuple[str, Any]]]]:
            mine = [client for m, client in calls if m is s]
            return asyncio.to_thread(asyncio.run, _sequence([leases(s, client) for client in mine]))

        batches = [batch for part in await asyncio.gather(*map(in_thread, masters)) for batch in part]
    else:
        batches = await asyncio.gather(*(leases(s, client) for s, client in calls))
    owner = {g.attempt: client for batch in batches for client, g in batch}
    grants = [g for batch in batches for _, g in batch]
    assert len(grants) == 24  # 12 units x 2 replicas, and not one more
    assert len({g.attempt for g in grants}) == len(grants)
    per_unit = Counter(g.unit for g in grants)
    assert set(per_unit.values()) == {2}
    for unit in await first.list_units(job.id):
        attempts = await second.list_attempts(unit.id)
        assert len(attempts) == 2 and len({t.client for t in attempts}) == 2
    acks = await asyncio.gather(
        *(masters[i % 2].record_results(owner[g.attempt], [ok(g.attempt)], T0 + 1) for i, g in enumerate(grants))
    )
    assert all(ack.accepted for (ack,) in acks)
    units = await second.list_units(job.id)
    assert [u.kind for u in units] == ["map"] * 12 + ["reduce"]  # created exactly once
    assert (await first.get_job(job.id)).done_map == 12


async def _sequence(calls: list[Awaitable[list[tuple[str, Any]]]]) -> list[list[tuple[str, Any]]]:
    return [await call for call in calls]


# -- keys and images --------------------------------------------------------------------------


@contract
async def test_keys_are_found_by_hash_and_names_are_unique(b: Backend) -> None:
    s = b.store
    alice = Key("alice", Role.SCIENTIST, token_hash("t-alice"), T0, "alice", expires_at=T0 + 60)
    await s.add_key(alice)
    assert await s.find_key(token_hash("t-alice")) == alice
    assert await s.find_key(token_hash("t-other")) is None
    with pytest.raises(Conflict, match="alice"):
        await s.add_key(Key("alice", Role.OPERATOR, token_hash("t-2"), T0, "alice"))
    assert [k.name for k in await s.list_keys()] == ["alice"]
    assert await (await b.another()).find_key(token_hash("t-alice")) == alice  # every master sees it


@contract
async def test_revoking_an_account_revokes_its_machines_and_nothing_else(b: Backend) -> None:
    s = b.store
    await s.add_key(Key("vol", Role.VOLUNTEER, token_hash("v"), T0, "vol"))
    await s.add_key(Key("sci", Role.SCIENTIST, token_hash("s"), T0, "sci"))
    one = await s.register_client("one", 1, HostFacts(), T0, "vol", token_hash("c1"))
    two = await s.register_client("two", 1, HostFacts(), T0, "vol", token_hash("c2"))
    other = await s.register_client("three", 1, HostFacts(), T0, "open-x", token_hash("c3"))
    assert (await s.get_client(one.id)).account == "vol"
    client_key = await s.find_key(token_hash("c1"))
    assert client_key is not None and (client_key.role, client_key.client, client_key.account) == (
        Role.CLIENT, one.id, "vol"
    )  # fmt: skip
    assert await s.revoke_key(two.id, T0 + 1) == 1  # one machine
    assert await s.revoke_key(two.id, T0 + 2) == 0  # already
    assert await s.revoke_key("vol", T0 + 3) == 2  # the account and its remaining machine
    revoked = {k.name: k.revoked_at for k in await s.list_keys()}
    assert revoked == {"vol": T0 + 3, "sci": None, one.id: T0 + 3, two.id: T0 + 1, other.id: None}
    assert await s.revoke_key("nobody", T0) == 0


def layer(n: int) -> Layer:
    return Layer(f"sha256:{n:064x}", 10 * n, (digest(b"%d" % n),))


@contract
async def test_images_by_id_and_by_tag(b: Backend) -> None:
    s = b.store
    await s.add_layer(layer(1))
    await s.add_layer(layer(1))  # again: no change
    assert await s.get_layer(layer(1).digest) == layer(1)
    assert await s.get_layer(layer(2).digest) is None
    first = Image(f"sha256:{1:064x}", digest(b"c1"), 100, (layer(1).digest,), "alice", T0, ("w:latest", "w:1"))
    second = Image(f"sha256:{2:064x}", digest(b"c2"), 200, (layer(1).digest,), "alice", T0 + 1, ("w:latest",))
    assert await s.add_image(first) == first
    await s.add_image(second)
    assert (await s.get_image("w:latest")).id == second.id  # type: ignore[union-attr]  # the last pushed
    assert (await s.get_image("w:1")).id == first.id  # type: ignore[union-attr]
    assert await s.get_image("w:2") is None
    again = await s.add_image(replace_tags(first, ("w:2",)))  # pushed again: keeps its record, gains the tag
    assert again.pushed_at == T0 and set(again.tags) >= {"w:1", "w:2"}
    assert [i.id for i in await s.list_images()] == [second.id, first.id]
    assert await s.list_images(owner="bob") == []
    signed = await s.add_signature(first.id, Signed("k1", "aa", "01"))
    await s.add_signature(first.id, Signed("k2", "bb", "02"))
    resigned = await s.add_signature(first.id, Signed("k1", "aa", "03"))  # one per key: the new one replaces it
    assert signed.signatures == (Signed("k1", "aa", "01"),)
    assert sorted((x.key, x.signature) for x in resigned.signatures) == [("k1", "03"), ("k2", "02")]
    assert (await (await b.another()).get_image(first.id)).signatures == resigned.signatures  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await s.add_signature(f"sha256:{9:064x}", Signed("k1", "aa", "01"))


def replace_tags(image: Image, tags: tuple[str, ...]) -> Image:
    from dataclasses import replace

    return replace(image, tags=tags, pushed_at=T0 + 5)


def test_open_mongodb_takes_the_database_from_the_url() -> None:
    """No server is contacted: the client connects on first use."""
    from dockercomp.server.store.mongo import GridFSBlobStore, MongoStore, open_mongodb

    async def names() -> list[str]:
        found = []
        for url in ("mongodb://127.0.0.1:1/science", "mongodb://127.0.0.1:1"):
            store, blobs = open_mongodb(url)
            assert isinstance(store, MongoStore) and isinstance(blobs, GridFSBlobStore)
            found.append(store.db.name)
            await store.close()
        return found

    assert asyncio.run(names()) == ["science", "dockercomp"]


@contract
async def test_a_unit_goes_back_to_a_client_only_after_the_unit_itself_failed_there(b: Backend) -> None:
    """Once, that is: a holder sees a unit fail RETRIES times at most, and a unit fails only
    once a second volunteer has had it too."""
    s = b.store
    a, c = await clients(s, 2)
    job = await s.create_job(job_spec(redundancy=redundancy(1, 1, 3)), chunks(2), T0)
    first, second = (g.attempt for g in await lease(s, a, 2))
    broken = ResultReport(second, "errored", error=ErrorKind.DOCKER_UNAVAILABLE, stderr_tail="no engine")
    await s.record_results(a, [failed(first), broken], T0 + 1)
    again = await one(s, a, T0 + 2)  # its workload failed: a retry here says as much as anywhere
    assert (await s.list_attempts(f"{job.id}.0"))[-1].id == again
    assert await lease(s, a) == []  # its own engine failed: unit 1 waits for another client
    await s.record_results(a, [failed(again)], T0 + 3)
    assert await lease(s, a, 2, T0 + 4) == []  # failed twice there: no more
    assert (await unit_of(s, job.id)).state == UnitState.READY  # one volunteer cannot fail it alone
    (g,) = [g for g in await lease(s, c, 2, T0 + 5) if g.unit == f"{job.id}.0"]
    await s.record_results(c, [failed(g.attempt)], T0 + 6)
    assert [u.state for u in await s.list_units(job.id)] == [UnitState.FAILED, UnitState.RUNNING]


# -- sweeps ---------------------------------------------------------------------------------


def params_inputs(sweep: Any) -> list[list[Any]]:
    """A sweep's units as the master makes them: none stores an input."""
    return list(sweep_inputs(len(sweep)))


@contract
async def test_a_sweep_unit_gets_its_parameters_as_env_over_the_jobs(b: Backend) -> None:
    s = b.store
    a, c = await clients(s, 2)
    spec = job_spec(
        env={"LANG": "C.UTF-8", "SEED": "0"},
        sweep=[{"SEED": 1, "MODEL": "a"}, {"SEED": 2, "RATE": 0.5, "FAST": True}],
        reduce={"command": ["merge"]},
    )
    job = await s.create_job(spec, params_inputs(spec.sweep), T0)
    assert (await s.get_job(job.id)).spec == spec
    assert (await (await b.another()).get_job(job.id)).spec == spec  # as stored, not as cached
    first, second = await lease(s, a, 2)
    assert first.env == {"LANG": "C.UTF-8", "SEED": "1", "MODEL": "a"}
    assert second.env == {"LANG": "C.UTF-8", "SEED": "2", "RATE": "0.5", "FAST": "true"}
    blob = params_json({"SEED": 2, "RATE": 0.5, "FAST": True})  # sent in the grant, stored nowhere
    assert [(i.name, i.hash, i.size, i.url, i.data) for i in second.inputs] == [
        ("params.json", digest(blob), len(blob), "", blob)
    ]
    await s.record_results(a, [ok(first.attempt, b"1\n"), ok(second.attempt, b"2\n")], T0 + 1)
    (reduce,) = await lease(s, c, 5, T0 + 2)
    assert (reduce.kind, reduce.env) == ("reduce", {"LANG": "C.UTF-8", "SEED": "0"})  # no unit's parameters
    assert [i.name for i in reduce.inputs] == ["000000", "000001"]


@contract
async def test_a_range_sweep_gives_each_unit_its_start_and_end_on_every_master(b: Backend) -> None:
    s = b.store
    (a,) = await clients(s, 1)
    spec = job_spec(sweep={"start": 1, "end": 26, "step": 10})
    job = await s.create_job(spec, params_inputs(spec.sweep), T0)
    assert (await s.get_job(job.id)).n_map == 3
    other = await b.another()  # a second master, which reads the job's sweep from the store
    grants = await other.lease(a, LeaseRequest(max_units=5, cpus=16.0), T0, POLICY)
    assert [(g.unit, g.env) for g in grants] == [
        (f"{job.id}.0", {"START": "1", "END": "11"}),
        (f"{job.id}.1", {"START": "11", "END": "21"}),
        (f"{job.id}.2", {"START": "21", "END": "26"}),
    ]
    assert [g.inputs[0].data for g in grants] == [
        params_json({"START": lo, "END": hi}) for lo, hi in ((1, 11), (11, 21), (21, 26))
    ]
    assert [u.inputs for u in await s.list_units(job.id)] == [[], [], []]


@contract
async def test_activity_counts_each_minute_in_the_write_that_made_it(b: Backend) -> None:
    """Completed attempts, errors (reported and expired), invalid results and integrity
    failures per minute and job, and the clients at work per minute; every master sees them."""
    s = b.store
    a, c, d = await clients(s, 3)
    job = await s.create_job(job_spec(redundancy=redundancy(2, 2, 4)), chunks(3), T0)
    heard: list[Any] = []
    s.events.subscribe(heard.append)
    assert await s.activity(T0) == []
    ga = [g.attempt for g in await lease(s, a, 3)]
    gc = [g.attempt for g in await lease(s, c, 3)]
    await s.record_results(a, [ok(ga[0]), ok(ga[1], b"lie"), failed(ga[2])], T0 + 10)  # the first minute
    integrity = ResultReport(gc[2], "errored", error=ErrorKind.INTEGRITY, stderr_tail="bad input")
    await s.record_results(c, [ok(gc[0]), ok(gc[1]), integrity], T0 + 70)  # the next
    (third,) = await lease(s, d, 1, now=T0 + 72)  # unit 1, whose two outputs disagree
    assert third.unit == f"{job.id}.1"
    await s.record_results(d, [ok(third.attempt)], T0 + 75)  # agrees with c: a's lie is invalid
    (late,) = await lease(s, d, 1, now=T0 + 76)  # unit 2 again
    await s.expire(late.deadline + 1, POLICY)
    m0, m1, m2 = (int(t // 60) * 60 for t in (T0 + 10, T0 + 70, late.deadline + 1))
    got = {(t.minute, t.job, t.counter): t.n for t in await (await b.another()).activity(T0)}
    assert got == {
        (m0, job.id, "completed"): 2, (m0, job.id, "errors"): 1, (m0, "", "clients"): 1,
        (m1, job.id, "completed"): 3, (m1, job.id, "errors"): 1, (m1, job.id, "integrity"): 1,
        (m1, job.id, "invalid"): 1, (m1, "", "clients"): 2,
        (m2, job.id, "errors"): 1, (m2, "", "clients"): 1,
    }  # fmt: skip
    kinds = [e.kind for e in heard]
    assert kinds.count(EventKind.RESULT_SUCCEEDED) == 5 and kinds.count(EventKind.LEASE_EXPIRED) == 1
    assert kinds.count(EventKind.UNIT_DONE) == 2 and kinds.count(EventKind.RESULT_INVALID) == 1
    assert all(e.job == job.id for e in heard)
    assert await s.activity(late.deadline + 120) == []


@contract
async def test_events_name_what_happened_and_a_failing_subscriber_breaks_nothing(b: Backend) -> None:
    s = b.store
    heard: list[Any] = []

    def broken(event: Any) -> None:
        raise RuntimeError("a subscriber's bug")

    s.events.subscribe(broken)
    s.events.subscribe(heard.append)
    (a,) = await clients(s, 1)
    job = await s.create_job(job_spec(reduce={"command": ["r"]}), chunks(1), T0)
    (attempt,) = [g.attempt for g in await lease(s, a, 1)]
    assert await s.record_results(a, [ok(attempt)], T0 + 1) == [Ack(attempt, True)]
    (reduce,) = [g.attempt for g in await lease(s, a, 1, now=T0 + 2)]
    await s.record_results(a, [ok(reduce)], T0 + 3)
    assert (await s.get_job(job.id)).state == JobState.DONE
    assert [(e.kind, e.unit, e.attempt, e.client) for e in heard] == [
        (EventKind.RESULT_SUCCEEDED, f"{job.id}.0", attempt, a),
        (EventKind.UNIT_DONE, f"{job.id}.0", "", ""),
        (EventKind.REDUCE_CREATED, "", "", ""),
        (EventKind.RESULT_SUCCEEDED, f"{job.id}.1", reduce, a),
        (EventKind.UNIT_DONE, f"{job.id}.1", "", ""),
        (EventKind.JOB_ENDED, "", "", ""),
    ]
    assert heard[-1].detail == "done" and heard[0].at == T0 + 1


# -- uploads --------------------------------------------------------------------------------


@contract
async def test_uploads_count_each_blob_once_per_owner_within_a_quota(b: Backend) -> None:
    from dockercomp.server.errors import TooLarge

    s = b.store
    assert await s.uploaded("alice") == 0
    with pytest.raises(TooLarge):
        await s.add_uploads("carol", [("d" * 32, 1001)], T0, quota=1000)  # her first, and too big already
    await s.add_uploads("alice", [("a" * 32, 600)], T0, quota=1000)
    await s.add_uploads("alice", [("a" * 32, 600)], T0, quota=1000)  # the same blob again: free
    await s.add_uploads("bob", [("a" * 32, 600)], T0, quota=1000)  # bob's own count
    with pytest.raises(TooLarge, match="has stored 600 of the 1000 bytes"):
        await s.add_uploads("alice", [("b" * 32, 401)], T0, quota=1000)
    await s.add_uploads("alice", [("b" * 32, 300), ("e" * 32, 100), ("a" * 32, 600)], T0, quota=1000)  # full
    await s.add_uploads("alice", [("c" * 32, 10**9)], T0)  # no quota
    assert (await s.uploaded("alice"), await s.uploaded("bob"), await s.uploaded("carol")) == (1000 + 10**9, 600, 0)
