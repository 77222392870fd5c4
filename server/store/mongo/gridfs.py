"""Blobs in GridFS, beside the MongoDB store's documents.

PyMongo's ``AsyncGridFSBucket`` accepts nothing but a real ``AsyncDatabase``, so this blob
store writes the GridFS layout itself (``fs.files`` and ``fs.chunks`` with the spec's fields,
``_id`` and filename = the xxh3-128 hash); ``mongofiles`` on a real server reads it, and the
mongomock-motor stand-in used by the tests stores it too.
"""

import contextlib
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from dockercomp.protocol.integrity import check_hash, digest

from ...blobs import BlobStore
from ...errors import NotFound, StoreUnavailable
from .guard import guard


class GridFSBlobStore(BlobStore):
    """Blobs as GridFS files named by their hash. Chunks go in before the file document, so a
    blob whose file document exists is complete; two masters storing the same blob write the
    same chunks, and the unique (files_id, n) index lets the second one's copies fall away."""

    CHUNK_SIZE = 255 * 1024  # GridFS's default

    def __init__(self, database: Any, bucket: str = "fs") -> None:
        self._files = database[f"{bucket}.files"]
        self._chunks = database[f"{bucket}.chunks"]
        self._indexed = False

    @guard
    async def size(self, blob: str) -> int | None:
        doc = await self._files.find_one({"_id": check_hash(blob)}, {"length": 1})
        return None if doc is None else doc["length"]

    @guard
    async def put(self, data: bytes) -> str:
        blob = digest(data)
        if await self._files.find_one({"_id": blob}, {"_id": 1}) is not None:
            return blob
        if not self._indexed:  # the indexes the GridFS spec asks writers to create
            await self._chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
            await self._files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
            self._indexed = True
        size = self.CHUNK_SIZE
        chunks = [{"files_id": blob, "n": i // size, "data": data[i : i + size]} for i in range(0, len(data), size)]
        if chunks:
            try:
                await self._chunks.insert_many(chunks, ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
        with contextlib.suppress(DuplicateKeyError):  # stored by another master meanwhile
            await self._files.insert_one(
                {"_id": blob, "filename": blob, "length": len(data), "chunkSize": size,
                 "uploadDate": datetime.now(UTC), "metadata": {"hash": "xxh3-128"}}
            )  # fmt: skip
        return blob

    @guard
    async def read(self, blob: str, start: int = 0, end: int | None = None) -> bytes:
        """Fetch only the chunks that hold the range."""
        doc = await self._files.find_one({"_id": check_hash(blob)}, {"length": 1, "chunkSize": 1})
        if doc is None:
            raise NotFound(f"no blob {blob}")
        length, size = doc["length"], doc["chunkSize"]
        start, end = max(0, start), length if end is None else min(end, length)
        if start >= end:
            return b""
        first, last = start // size, (end - 1) // size
        query = {"files_id": blob, "n": {"$gte": first, "$lte": last}}
        chunks = await self._chunks.find(query, {"n": 1, "data": 1}).sort("n", ASCENDING).to_list(None)
        if [c["n"] for c in chunks] != list(range(first, last + 1)):
            raise StoreUnavailable(f"blob {blob} is missing chunks in GridFS")
        data = b"".join(bytes(c["data"]) for c in chunks)
        return data[start - first * size : end - first * size]
