"""Chunks and results, stored content-addressed by their xxh3-128 hash.

A blob is written once and never changes, so any number of masters can share a blob store,
replicas' identical outputs are kept once, and a client can cache by hash.
"""

import os
import sqlite3
import tempfile
from abc import ABC, abstractmethod

from dockercomp.protocol.integrity import check_hash, digest

from .errors import NotFound, StoreUnavailable


class BlobStore(ABC):
    @abstractmethod
    async def size(self, blob: str) -> int | None:
        """The blob's size, or None when it is not stored."""

    @abstractmethod
    async def put(self, data: bytes) -> str:
        """Store ``data`` (a no-op when already there); return its hash."""

    @abstractmethod
    async def read(self, blob: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of a blob; NotFound when it is not stored."""

    async def put_many(self, blobs: list[bytes]) -> list[str]:
        """Store several blobs (a result batch's outputs); a backend may write them in one go."""
        return [await self.put(data) for data in blobs]

    async def close(self) -> None:  # noqa: B027 - optional: most blob stores hold nothing to close
        """Let go of connections and files; the master calls it once when it stops."""


class DirectoryBlobStore(BlobStore):
    """Blobs as files ``ROOT/ab/cd/abcd…``; written to a temporary name and renamed, so a
    reader never sees half a blob and two writers of the same blob do not collide."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _path(self, blob: str) -> str:
        check_hash(blob)
        return os.path.join(self.root, blob[:2], blob[2:4], blob)

    async def size(self, blob: str) -> int | None:
        try:
            return os.stat(self._path(blob)).st_size
        except FileNotFoundError:
            return None

    async def put(self, data: bytes) -> str:
        blob = digest(data)
        path = self._path(blob)
        if os.path.exists(path):
            return blob
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return blob

    async def read(self, blob: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with open(self._path(blob), "rb") as f:
                f.seek(start)
                return f.read(-1 if end is None else max(0, end - start))
        except FileNotFoundError:
            raise NotFound(f"no blob {blob}") from None


class SQLiteBlobStore(BlobStore):
    """The embedded store's blobs: small ones in a table of the SQLite database, the rest as
    files of a DirectoryBlobStore.

    Tiny outputs (a count, a hash) are common, and a file each costs an inode, a directory
    entry and several system calls; a row costs a few microseconds, and SQLite reads and
    writes blobs this small faster than the file system does (sqlite.org/intern-v-extern-blob).
    Blobs written as files by earlier versions are still found there.
    """

    SMALL = 64 << 10  # blobs up to this many bytes live in the database

    def __init__(self, path: str, files: DirectoryBlobStore) -> None:
        self.files = files
        self._db: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA synchronous = NORMAL")  # the database is in WAL mode (SQLiteStore sets it)
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
        if self._db is not None:
            self._db.close()
            self._db = None
