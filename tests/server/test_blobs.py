"""The blob stores of the embedded backend: a directory tree, and the SQLite store that keeps
small blobs in the database and the others in that directory tree."""

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest

from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.integrity import digest
from dockercomp.server.blobs import BlobStore, DirectoryBlobStore
from dockercomp.server.errors import NotFound
from dockercomp.server.store import open_store
from dockercomp.server.store.sqlite import SQLiteBlobStore

SMALL = b"a tiny output\n"
LARGE = bytes(range(256)) * (SQLiteBlobStore.SMALL // 256 + 1)  # just past the small-blob limit


def run(kind: str, tmp_path: Path, test: Callable[[BlobStore], Awaitable[None]]) -> None:
    async def main() -> None:
        files = DirectoryBlobStore(str(tmp_path / "blobs"))
        blobs: BlobStore = files if kind == "directory" else SQLiteBlobStore(str(tmp_path / "store.db"), files)
        try:
            await test(blobs)
        finally:
            await blobs.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["directory", "sqlite"])
@pytest.mark.parametrize("data", [SMALL, LARGE, b""], ids=["small", "large", "empty"])
def test_put_size_read_round_trip(kind: str, data: bytes, tmp_path: Path) -> None:
    async def test(blobs: BlobStore) -> None:
        blob = digest(data)
        assert await blobs.size(blob) is None
        assert await blobs.put(data) == blob
        assert await blobs.put(data) == blob  # idempotent
        assert await blobs.size(blob) == len(data)
        assert await blobs.read(blob) == data
        assert await blobs.read(blob, 3) == data[3:]
        assert await blobs.read(blob, 2, 9) == data[2:9]
        assert await blobs.read(blob, len(data) + 5) == b""

    run(kind, tmp_path, test)


@pytest.mark.parametrize("kind", ["directory", "sqlite"])
def test_put_many_answers_hashes_in_order(kind: str, tmp_path: Path) -> None:
    batch = [b"one", LARGE, b"two", b"one"]

    async def test(blobs: BlobStore) -> None:
        assert await blobs.put_many(batch) == [digest(data) for data in batch]
        assert await blobs.put_many([]) == []
        for data in batch:
            assert await blobs.read(digest(data)) == data

    run(kind, tmp_path, test)


@pytest.mark.parametrize("kind", ["directory", "sqlite"])
def test_missing_and_malformed_hashes(kind: str, tmp_path: Path) -> None:
    async def test(blobs: BlobStore) -> None:
        with pytest.raises(NotFound):
            await blobs.read(digest(b"never stored"))
        for bad in ("", "../../etc/passwd", "A" * 32, "0" * 31):
            with pytest.raises(ProtocolError):
                await blobs.size(bad)
            with pytest.raises(ProtocolError):
                await blobs.read(bad)

    run(kind, tmp_path, test)


def test_small_blobs_live_in_the_database_and_large_ones_in_files(tmp_path: Path) -> None:
    async def test(blobs: BlobStore) -> None:
        await blobs.put_many([SMALL, LARGE])
        files = DirectoryBlobStore(str(tmp_path / "blobs"))
        assert await files.size(digest(SMALL)) is None
        assert await files.size(digest(LARGE)) == len(LARGE)
        with closing(sqlite3.connect(tmp_path / "store.db")) as db:
            assert db.execute("SELECT hash FROM blobs").fetchall() == [(digest(SMALL),)]

    run("sqlite", tmp_path, test)


def test_small_blobs_written_as_files_earlier_are_still_found(tmp_path: Path) -> None:
    async def main() -> None:
        files = DirectoryBlobStore(str(tmp_path / "blobs"))
        await files.put(SMALL)
        blobs = SQLiteBlobStore(str(tmp_path / "store.db"), files)
        try:
            assert await blobs.size(digest(SMALL)) == len(SMALL)
            assert await blobs.read(digest(SMALL), 2) == SMALL[2:]
        finally:
            await blobs.close()

    asyncio.run(main())


def test_open_store_gives_the_sqlite_store_and_blobs_sharing_one_file(tmp_path: Path) -> None:
    async def main() -> None:
        first_store, first = await open_store("sqlite://", str(tmp_path))
        second_store, second = await open_store("sqlite://", str(tmp_path))  # a second master
        try:
            assert isinstance(first, SQLiteBlobStore)
            await first.put(SMALL)
            assert await second.read(digest(SMALL)) == SMALL
        finally:
            for closing in (first, second, first_store, second_store):
                await closing.close()

    asyncio.run(main())


def test_a_closed_store_refuses_use(tmp_path: Path) -> None:
    async def test(blobs: BlobStore) -> None:
        await blobs.close()
        await blobs.close()  # closing twice is harmless
        with pytest.raises(RuntimeError):
            await blobs.size(digest(SMALL))

    run("sqlite", tmp_path, test)
