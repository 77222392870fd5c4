"""The schema version of a store, and ``migrate``: bring a database to the version this master
knows (``dockercomp store migrate``).

Each backend records the version it was last brought to: SQLite in ``PRAGMA user_version``,
MongoDB in the ``meta`` document ``{_id: "schema", version: N}``. Steps are numbered and
named, additive and idempotent; a store's ``open()`` applies them itself (they only add
tables, columns and indexes, so an older master still reads the result), and refuses a
database recorded at a version newer than it knows: an older master would misread what a newer
one wrote. ``migrate`` is the same work run on purpose, with a report and a dry run.

Version 1 is the current schema. SQLite: the SCHEMA tables and the columns added since the
first release (sqlite/store.py's ADDED_COLUMNS, applied by ``SQLiteStore.open``). MongoDB: the
indexes ``MongoStore.open`` creates; the documents need no backfill, since every field added
since the first release is read with its default.
"""

import os
import sqlite3
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadRequest, ServerError, StoreUnavailable

SCHEMA_VERSION = 1
"""The schema version this master writes and understands."""

STEPS: dict[str, tuple[str, ...]] = {
    "sqlite": ("1: create the tables and add the columns added since the first release",),
    "mongodb": ("1: create the indexes every query uses",),
}
"""Each backend's steps by version (step i brings the database to version i + 1)."""

META_ID = "schema"


class BadStoreURL(BadRequest):
    """A store URL that names no backend, or that the driver cannot parse."""


class SchemaTooNew(ServerError):
    """The database was brought to a schema version newer than this master knows."""

    status = 503


def refuse_newer(found: int, where: str) -> None:
    """Raise SchemaTooNew when ``found`` is past SCHEMA_VERSION."""
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the store {where} is at schema version {found}, newer than this master's {SCHEMA_VERSION}: "
            f"upgrade dockercomp on this master (an older master would misread it), then run "
            f"`dockercomp store migrate --store URL`"
        )


@dataclass(frozen=True)
class MigrationReport:
    """What ``migrate`` found and did, as plain data (``as_dict`` for ``--json``)."""

    backend: str
    from_version: int
    to_version: int
    steps: list[str] = field(default_factory=list)
    """The steps applied (or, on a dry run, those that would be)."""
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def backend_of(url: str) -> str:
    """The backend a store URL names ("sqlite" or "mongodb"); BadStoreURL for anything else."""
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(("mongodb://", "mongodb+srv://")):
        return "mongodb"
    raise BadStoreURL(f"unknown store URL {url!r}: use sqlite:///PATH or mongodb://HOST/DB")


def sqlite_path(url: str, data_dir: str) -> str:
    """The database file a ``sqlite://`` URL names (the data dir's dockercomp.db when empty)."""
    path = os.path.normpath(url.removeprefix("sqlite://") or os.path.join(data_dir, "dockercomp.db"))
    return "/" + path.lstrip("/") if path.startswith("/") else path  # sqlite:////abs gives //abs


def _sqlite_version(path: str) -> int:
    if not os.path.exists(path):
        return 0
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise BadStoreURL(f"{path} is not a dockercomp SQLite database: {exc}") from None
    return version if version or not tables else 0  # a database from before versions counts as 0


async def _mongo_version(store: Any) -> int:
    doc = await store.db["meta"].find_one({"_id": META_ID})
    return int((doc or {}).get("version", 0))


async def migrate(url: str, data_dir: str, dry_run: bool = False) -> MigrationReport:
    """Bring the store at ``url`` to SCHEMA_VERSION, applying each missing step in order, and
    record the version; with ``dry_run`` only report what would be applied. Safe to run again
    (nothing to do), and safe beside running masters (every step is additive and idempotent).

    Raises BadStoreURL (a URL naming no backend, one the driver cannot parse, a file that is not
    SQLite), StoreUnavailable (MongoDB unreachable), SchemaTooNew (recorded version newer than
    this code's), and DeploymentError (a MongoDB server too old)."""
    backend = backend_of(url)
    if backend == "sqlite":
        from .sqlite import SQLiteStore

        path = sqlite_path(url, data_dir)
        found = _sqlite_version(path)
        refuse_newer(found, path)
        steps = list(STEPS["sqlite"][found:SCHEMA_VERSION])
        if steps and not dry_run:
            store = SQLiteStore(path)
            await store.open()  # applies the steps (one place: SQLiteStore.open) and records the version
            await store.close()
        return MigrationReport(backend, found, found if dry_run else max(found, SCHEMA_VERSION), steps, dry_run)
    return await _migrate_mongo(url, dry_run)


async def _migrate_mongo(url: str, dry_run: bool) -> MigrationReport:
    from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI

    from .mongo import MongoStore

    try:
        store = MongoStore(url)
    except (InvalidURI, ConfigurationError) as exc:
        raise BadStoreURL(f"bad MongoDB URL: {exc}") from None
    try:
        return await migrate_mongo_store(store, dry_run)
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"MongoDB is unreachable: {exc}") from None
    finally:
        await store.close()


async def migrate_mongo_store(store: Any, dry_run: bool = False) -> MigrationReport:
    """``migrate`` on an unopened MongoStore (tests hand one on the stand-in)."""
    found = await _mongo_version(store)
    refuse_newer(found, "MongoDB")
    steps = list(STEPS["mongodb"][found:SCHEMA_VERSION])
    if steps and not dry_run:
        await store.open()  # creates the indexes (one place: MongoStore.open) and records the version
    return MigrationReport("mongodb", found, found if dry_run else max(found, SCHEMA_VERSION), steps, dry_run)
