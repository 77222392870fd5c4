"""A master started on a database an earlier version made: the columns added since appear, and
what was there stays."""

import asyncio
import sqlite3
from pathlib import Path

from dockercomp.server.store.sqlite import SQLiteStore


def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE jobs (id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
            finished_at REAL, n_map INTEGER NOT NULL, done_map INTEGER NOT NULL DEFAULT 0,
            failed_map INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE clients (id TEXT PRIMARY KEY, name TEXT NOT NULL, registered_at REAL NOT NULL,
            last_seen REAL NOT NULL, slots INTEGER NOT NULL, busy INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL,
            containers TEXT NOT NULL DEFAULT '[]', valid INTEGER NOT NULL DEFAULT 0,
            invalid INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0);
        INSERT INTO clients (id, name, registered_at, last_seen, slots, host) VALUES ('c1', 'old', 1, 1, 1, '{}');
        """
    )
    db.close()

    async def upgrade() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        (client,) = await store.list_clients()
        assert (client.id, client.name, client.account) == ("c1", "old", "")
        assert await store.list_jobs(owner="anyone") == []
        await store.close()

    asyncio.run(upgrade())
    asyncio.run(upgrade())  # and again: nothing to add the second time
