"""Chunks and results, stored content-addressed by their xxh3-128 hash.

A blob is written once and never changes, so any number of masters can share a blob store,
replicas' identical outputs are kept once, and a client can cache by hash.
"""

import os
import tempfile
from abc import ABC, abstractmethod

from dockercomp.protocol.integrity import check_hash, digest

from .errors import NotFound


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
