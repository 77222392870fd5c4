"""The embedded store's blobs: small ones in the SQLite database beside the units, the rest as
files of a directory (server/blobs.py)."""

import sqlite3

from dockercomp.protocol.integrity import check_hash, digest

from ...blobs import BlobStore, DirectoryBlobStore
from ...errors import StoreUnavailable


class SQLiteBlobStore(BlobStore):
    """The embedded store's blobs: small ones in a table of the SQLite database, the rest as
    files of a DirectoryBlobStore.

    Tiny outputs (a count, a hash) are common, and a file each costs an inode, a directory
    entry and several system calls; a row costs a few microseconds, and SQLite reads and
    writes blobs this small faster than the file system does (sqlite.org/intern-v-extern-blob).
    Blobs written as files by earlier versions are still found there.
    """

    SMALL = 64 << 10  # blobs up to this many bytes live in the database

    def __init__(self, path: str, files: DirectoryBlobStore, db: sqlite3.Connection | None = None) -> None:
        """``db``: the SQLiteStore's connection to share (the master's: one page cache, which a
        second connection would find stale after every write of the other), else one of its own."""
        self.files = files
        self._own = db is None
        self._db: sqlite3.Connection | None = db or sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        if self._own:
            self._db.execute("PRAGMA synchronous = NORMAL")  # the database is in WAL mode (SQLiteStore sets it)
            self._db.execute("PRAGMA wal_autocheckpoint = 0")  # SQLiteStore's Checkpointer does them
        self._db.execute("CREATE TABLE IF NOT EXISTS blobs (hash TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the blob store is closed")
        return self._db

    async def size(self, blob: str) -> int | None:
        row = self.db.execute("SELECT length(data) FROM blobs WHERE hash = ?", (check_hash(blob),)).fetchone()
        return row[0] if row is not None else await self.files.size(blob)

    async def put(self, data: bytes) -> str:
        (blob,) = await self.put_many([data])
        return blob

    async def put_many(self, blobs: list[bytes]) -> list[str]:
        hashes, rows = [], []
        for data in blobs:
            if len(data) > self.SMALL:
                hashes.append(await self.files.put(data))
            else:
                hashes.append(digest(data))
                rows.append((hashes[-1], data))
        if rows:
            self._insert(rows)
        return hashes

    def _insert(self, rows: list[tuple[str, bytes]]) -> None:
        """Insert small blobs in one transaction: a commit costs more than a row."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the database is busy, try again: {exc}") from None
        try:
            db.executemany("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def read(self, blob: str, start: int = 0, end: int | None = None) -> bytes:
        row = self.db.execute("SELECT data FROM blobs WHERE hash = ?", (check_hash(blob),)).fetchone()
        if row is None:
            return await self.files.read(blob, start, end)
        return row[0][start:end]

    async def close(self) -> None:
        if self._db is not None and self._own:
            self._db.close()
        self._db = None
