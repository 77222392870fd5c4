"""Every query the MongoDB store makes is served by an index it creates.

The whole store contract suite (tests/server/test_store_*.py: jobs, clients, heartbeats,
leases, results, expiry, revalidation, listings, keys, images, uploads, activity) runs on a
recording stand-in that notes each filter and sort the store and its GridFS blob store send
(find, find_one, find_one_and_*, update_*, count_documents, delete_*, an aggregate's $match).
mongomock cannot ``explain``, so the assertion is the prefix rule: a query is covered when it
names ``_id``, or when the first field of some index the store created (``index_information``)
is among the fields it filters on (an ``$elemMatch`` on ``attempts`` filters on
``attempts.<field>``; each branch of an ``$or`` must be covered on its own); a query without a
filter is covered when its sort is an index's leading fields. On a real server
(DOCKERCOMP_TEST_MONGO_URL) the same queries would be checked by ``explain`` for COLLSCAN; that
is not done here, as the stand-in is what CI runs.
"""

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

from tests.server import (
    test_store_contract,
    test_store_control,
    test_store_holders,
    test_store_scheduling,
    test_store_trust,
)
from tests.server.test_store_contract import Backend, YieldingCollection

mongomock_motor = pytest.importorskip("mongomock_motor")

FULL_READS = {
    ("shares", ()): "one small document per job owner, read whole by the fair-share scheduler",
}
"""Reads that scan a collection on purpose, and why."""

QUERYING = ("find", "find_one", "find_one_and_update", "find_one_and_delete", "find_one_and_replace", "update_one",
            "update_many", "replace_one", "count_documents", "delete_one", "delete_many")  # fmt: skip

Query = tuple[str, str, dict[str, Any], tuple[str, ...]]  # collection, method, filter, sort fields


class Cursor:
    def __init__(self, cursor: Any, note: Any) -> None:
        self._cursor, self._note = cursor, note

    def sort(self, key: Any, direction: Any = None) -> "Cursor":
        self._note(tuple([key] if isinstance(key, str) else [field for field, _ in key]))
        self._cursor = self._cursor.sort(key, direction) if direction is not None else self._cursor.sort(key)
        return self

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._cursor, name)
        if name in ("limit", "skip", "batch_size"):

            def chained(*args: Any) -> "Cursor":
                self._cursor = attribute(*args)
                return self

            return chained
        return attribute

    def __aiter__(self) -> Any:
        return self._cursor.__aiter__()


class Recording(YieldingCollection):
    def __init__(self, collection: Any, name: str, queries: list[Query]) -> None:
        super().__init__(collection)
        self._name, self._queries = name, queries

    def __getattr__(self, name: str) -> Any:
        method = super().__getattr__(name)
        if name == "aggregate":

            def aggregate(pipeline: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
                match = pipeline[0].get("$match", {}) if pipeline else {}
                self._queries.append((self._name, name, match, ()))
                return method(pipeline, *args, **kwargs)

            return aggregate
        if name not in QUERYING:
            return method
        if name == "find":

            def find(query: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Cursor:
                index = len(self._queries)
                self._queries.append((self._name, name, query or {}, ()))

                def note(sort: tuple[str, ...]) -> None:
                    self._queries[index] = (*self._queries[index][:3], sort)

                return Cursor(method(query or {}, *args, **kwargs), note)

            return find

        def call(query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self._queries.append((self._name, name, query, ()))
            return method(query, *args, **kwargs)

        return call


class RecordingDatabase:
    def __init__(self, database: Any, queries: list[Query]) -> None:
        self.database, self._queries = database, queries

    def get_collection(self, name: str) -> Recording:
        return Recording(self.database[name], name, self._queries)

    __getitem__ = get_collection


class RecordingBackend(Backend):
    def __init__(self, tmp_path: Path, queries: list[Query]) -> None:
        super().__init__("mongodb", tmp_path)
        self.queries = queries

    async def _mongo(self) -> None:
        from dockercomp.server.store.mongo import GridFSBlobStore, MongoStore

        self.database = RecordingDatabase(mongomock_motor.AsyncMongoMockClient()["dockercomp"], self.queries)
        self.blobs = GridFSBlobStore(self.database)
        self._make = lambda: MongoStore(self.database)

    async def indexes(self) -> dict[str, list[tuple[str, ...]]]:
        found: dict[str, list[tuple[str, ...]]] = {}
        for name in await self.database.database.list_collection_names():
            info = await self.database.database[name].index_information()
            found[name] = [tuple(field for field, _ in index["key"]) for index in info.values()]
        return found


def fields(query: dict[str, Any]) -> set[str]:
    """The fields a filter constrains (an $and's branches together; $or is split by covered())."""
    found: set[str] = set()
    for key, value in query.items():
        if key == "$and":
            for branch in value:
                found |= fields(branch)
        elif not key.startswith("$"):
            found.add(key)
            if isinstance(value, dict) and isinstance(value.get("$elemMatch"), dict):
                found |= {f"{key}.{inner}" for inner in value["$elemMatch"] if not inner.startswith("$")}
    return found


def covered(query: dict[str, Any], sort: tuple[str, ...], indexes: list[tuple[str, ...]]) -> bool:
    if "$and" in query:  # the branches together, one $or among them split below
        merged = {key: value for key, value in query.items() if key != "$and"}
        for branch in query["$and"]:
            assert not ("$or" in branch and "$or" in merged), f"two $or in one query: {query}"
            merged.update(branch)
        return covered(merged, sort, indexes)
    if "$or" in query:
        rest = {key: value for key, value in query.items() if key != "$or"}
        return all(covered({**rest, **branch}, sort, indexes) for branch in query["$or"])
    named = fields(query)
    if not named:
        return bool(sort) and any(index[: len(sort)] == sort for index in indexes)
    return "_id" in named or any(index[0] in named for index in indexes)


def contract_tests() -> list[Any]:
    tests = []
    for module in (test_store_contract, test_store_control, test_store_holders, test_store_scheduling,
                   test_store_trust):  # fmt: skip
        for name, run in vars(module).items():
            if name.startswith("test_") and list(inspect.signature(run).parameters) == ["store"]:
                tests.append(run)
    return tests


def test_the_workload_is_the_whole_contract_suite() -> None:
    assert len(contract_tests()) >= 40  # the suite, not a handful of calls picked to pass


def test_every_query_the_store_makes_is_served_by_an_index(tmp_path: Path) -> None:
    queries: list[Query] = []
    indexes: dict[str, list[tuple[str, ...]]] = {}
    for i, run in enumerate(contract_tests()):
        backend = RecordingBackend(tmp_path / str(i), queries)
        run(backend)
        for name, found in asyncio.run(backend.indexes()).items():
            indexes[name] = sorted(set(indexes.get(name, [])) | set(found))
    seen = {(collection, method) for collection, method, _, _ in queries}
    for wanted in [("units", "find"), ("units", "update_one"), ("units", "count_documents"), ("jobs", "find"),
                   ("clients", "find_one_and_update"), ("keys", "find_one"), ("images", "find_one"),
                   ("activity", "update_one"), ("fs.chunks", "find")]:  # fmt: skip
        assert wanted in seen, f"the workload never made a {wanted} query"
    uncovered = sorted(
        {
            f"{collection}.{method}({query}) sort={sort}"
            for collection, method, query, sort in queries
            if (collection, tuple(sorted(fields(query)))) not in FULL_READS
            and not covered(query, sort, indexes.get(collection, []))
        }
    )
    assert not uncovered, "queries no index serves:\n" + "\n".join(uncovered)


def test_the_prefix_rule_itself() -> None:
    indexes = [("_id",), ("job_id", "idx"), ("attempts.deadline",)]
    assert covered({"job_id": "j", "kind": "map"}, ("idx",), indexes)
    assert covered({"attempts": {"$elemMatch": {"deadline": {"$lt": 1}}}}, (), indexes)
    assert covered({"$or": [{"_id": 1}, {"job_id": 2}]}, (), indexes)
    assert not covered({"$or": [{"_id": 1}, {"kind": 2}]}, (), indexes)
    assert not covered({"kind": "map"}, (), indexes)
    assert covered({"$and": [{"$or": [{"_id": 1}, {"job_id": 2}]}, {"kind": None}]}, (), indexes)
    assert not covered({"$and": [{"$or": [{"_id": 1}, {"kind": 2}]}, {"idx": None}]}, (), indexes)
    assert not covered({}, ("created_at",), indexes)
    assert covered({}, ("job_id", "idx"), indexes)
