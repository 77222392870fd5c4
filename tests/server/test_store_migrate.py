"""``migrate`` (server/store/migrate.py) on both backends: an old-shaped database is brought to
the current schema version, a second run has nothing to do, a dry run changes nothing, and a
database newer than this master is refused, by ``migrate`` and by a master's ``open()``.
MongoDB runs on the mongomock-motor stand-in (as the contract suite does when
DOCKERCOMP_TEST_MONGO_URL is unset)."""

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dockercomp.server.errors import StoreUnavailable
from dockercomp.server.store import BadStoreURL, SchemaTooNew, migrate, open_store
from dockercomp.server.store.migrate import SCHEMA_VERSION, STEPS, migrate_mongo_store
from dockercomp.server.store.sqlite import SQLiteStore

OLD_SQLITE = """
CREATE TABLE clients (id TEXT PRIMARY KEY, name TEXT NOT NULL, registered_at REAL NOT NULL,
    last_seen REAL NOT NULL, slots INTEGER NOT NULL, busy INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL,
    containers TEXT NOT NULL DEFAULT '[]', valid INTEGER NOT NULL DEFAULT 0,
    invalid INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0);
INSERT INTO clients (id, name, registered_at, last_seen, slots, host) VALUES ('c1', 'old', 1, 1, 1, '{}');
"""


def old_sqlite(path: Path) -> str:
    db = sqlite3.connect(path)
    db.executescript(OLD_SQLITE)
    db.close()
    return f"sqlite://{path}"


def version_and_columns(path: Path) -> tuple[int, set[str]]:
    db = sqlite3.connect(path)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        return version, {row[1] for row in db.execute("PRAGMA table_info(clients)")}
    finally:
        db.close()


def test_sqlite_from_old_to_current_then_nothing_to_do(tmp_path: Path) -> None:
    url = old_sqlite(tmp_path / "old.db")
    first = asyncio.run(migrate(url, str(tmp_path)))
    assert (first.backend, first.from_version, first.to_version) == ("sqlite", 0, SCHEMA_VERSION)
    assert first.steps == list(STEPS["sqlite"]) and not first.dry_run
    version, columns = version_and_columns(tmp_path / "old.db")
    assert version == SCHEMA_VERSION and "account" in columns
    again = asyncio.run(migrate(url, str(tmp_path)))
    assert (again.from_version, again.to_version, again.steps) == (SCHEMA_VERSION, SCHEMA_VERSION, [])
    assert again.as_dict()["steps"] == []

    async def clients() -> list[str]:
        store = SQLiteStore(str(tmp_path / "old.db"))
        await store.open()
        try:
            return [client.name for client in await store.list_clients()]
        finally:
            await store.close()

    assert asyncio.run(clients()) == ["old"]  # what was there stays


def test_sqlite_dry_run_changes_nothing(tmp_path: Path) -> None:
    url = old_sqlite(tmp_path / "old.db")
    before = (tmp_path / "old.db").read_bytes()
    report = asyncio.run(migrate(url, str(tmp_path), dry_run=True))
    assert (report.from_version, report.to_version, report.steps, report.dry_run) == (0, 0, list(STEPS["sqlite"]), True)
    assert (tmp_path / "old.db").read_bytes() == before


def test_sqlite_newer_is_refused_by_migrate_and_by_a_master(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("CREATE TABLE future (x)")
    db.close()
    with pytest.raises(SchemaTooNew, match=r"newer than this master.s.*dockercomp store migrate --store URL"):
        asyncio.run(migrate(f"sqlite://{path}", str(tmp_path)))
    with pytest.raises(SchemaTooNew):
        asyncio.run(open_store(f"sqlite://{path}", str(tmp_path)))


def test_bad_urls_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BadStoreURL, match="unknown store URL 'postgres://x'"):
        asyncio.run(migrate("postgres://x", str(tmp_path)))
    with pytest.raises(BadStoreURL, match="unknown store URL"):
        asyncio.run(open_store("redis://x", str(tmp_path)))
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(BadStoreURL, match="not a dockercomp SQLite database"):
        asyncio.run(migrate(f"sqlite://{tmp_path / 'junk.db'}", str(tmp_path)))
    with pytest.raises(BadStoreURL, match="bad MongoDB URL"):
        asyncio.run(migrate("mongodb://", str(tmp_path)))


def test_an_unreachable_mongodb_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="MongoDB is unreachable"):
        asyncio.run(migrate("mongodb://127.0.0.1:9/dockercomp?serverSelectionTimeoutMS=200", str(tmp_path)))


@pytest.fixture
def mongo_database() -> Any:
    mongomock_motor = pytest.importorskip("mongomock_motor")
    return mongomock_motor.AsyncMongoMockClient()["dockercomp"]


def test_mongodb_from_old_to_current_then_nothing_to_do(mongo_database: Any) -> None:
    from dockercomp.server.store.mongo import MongoStore

    async def run() -> None:
        await mongo_database["units"].insert_one({"_id": "j.0", "job_id": "j", "idx": 0})  # no indexes, no meta
        dry = await migrate_mongo_store(MongoStore(mongo_database), dry_run=True)
        assert (dry.from_version, dry.to_version, dry.steps) == (0, 0, list(STEPS["mongodb"]))
        assert await mongo_database["meta"].find_one({"_id": "schema"}) is None
        assert set(await mongo_database["units"].index_information()) == {"_id_"}
        first = await migrate_mongo_store(MongoStore(mongo_database))
        assert (first.backend, first.from_version, first.to_version) == ("mongodb", 0, SCHEMA_VERSION)
        assert (await mongo_database["meta"].find_one({"_id": "schema"}))["version"] == SCHEMA_VERSION
        assert {"units_by_job", "attempts_deadline"} <= set(await mongo_database["units"].index_information())
        again = await migrate_mongo_store(MongoStore(mongo_database))
        assert (again.from_version, again.steps) == (SCHEMA_VERSION, [])
        assert await mongo_database["units"].count_documents({}) == 1

    asyncio.run(run())


def test_mongodb_newer_is_refused_by_migrate_and_by_a_master(mongo_database: Any) -> None:
    from dockercomp.server.store.mongo import MongoStore

    async def run() -> None:
        await mongo_database["meta"].insert_one({"_id": "schema", "version": SCHEMA_VERSION + 1})
        with pytest.raises(SchemaTooNew, match="newer than this master's"):
            await migrate_mongo_store(MongoStore(mongo_database))
        with pytest.raises(SchemaTooNew):
            await MongoStore(mongo_database).open()
        assert (await mongo_database["meta"].find_one({"_id": "schema"}))["version"] == SCHEMA_VERSION + 1

    asyncio.run(run())
