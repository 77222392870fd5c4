"""Chunks and results, stored content-addressed by their xxh3-128 hash.

A blob is written once and never changes, so any number of masters can share a blob store,
replicas' identical outputs are kept once, and a client can cache by hash.
"""

import asyncio
import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from typing import BinaryIO

import xxhash

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

    async def put_file(self, path: str, blob: str) -> None:
        """Store the file at ``path``, which hashes to ``blob`` (an ``Upload`` checked it); the
        file is the store's then, to move or delete. This default reads it whole and ``put``s
        it; a backend that can take a file as it is (DirectoryBlobStore moves it) overrides it."""
        try:
            with open(path, "rb") as f:
                await self.put(f.read())
        finally:
            os.unlink(path)

    async def put_many(self, blobs: list[bytes]) -> list[str]:
        """Store several blobs (a result batch's outputs); a backend may write them in one go."""
        return [await self.put(data) for data in blobs]

    async def close(self) -> None:  # noqa: B027 - optional: most blob stores hold nothing to close
        """Let go of connections and files; the master calls it once when it stops."""


class DirectoryBlobStore(BlobStore):
    """Blobs as files ``ROOT/ab/cd/abcd…``; written to a temporary name and renamed, so a
    reader never sees half a blob and two writers of the same blob do not collide. A large
    blob is written by a worker thread, so the event loop does not wait for the disk."""

    IN_THREAD = 1 << 20  # bytes from which a blob is written off the event loop

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
        if len(data) >= self.IN_THREAD:
            await asyncio.get_running_loop().run_in_executor(None, self._write, path, data)
        else:
            self._write(path, data)
        return blob

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    async def put_file(self, path: str, blob: str) -> None:
        target = self._path(blob)
        if os.path.exists(target):
            os.unlink(path)
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.replace(path, target)  # the same file system (see Upload): a rename, no copy
        except OSError:  # another file system after all: copy, then rename into place
            with open(path, "rb") as f:
                await self.put(f.read())
            os.unlink(path)

    async def read(self, blob: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with open(self._path(blob), "rb") as f:
                f.seek(start)
                return f.read(-1 if end is None else max(0, end - start))
        except FileNotFoundError:
            raise NotFound(f"no blob {blob}") from None


class Upload:
    """A blob arriving in pieces (a streamed request body): each piece is written to a
    temporary file and hashed as it comes, so a master holds none of it in memory however
    many uploads are under way. ``store`` hands the file, once checked, to a blob store."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self._file = os.fdopen(fd, "wb")
        self._hasher = xxhash.xxh3_128()
        self.size = 0

    def write(self, piece: bytes) -> None:
        self._file.write(piece)
        self._hasher.update(piece)
        self.size += len(piece)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def open(self) -> BinaryIO:
        """The whole upload to read from the start (it is complete: no more ``write``)."""
        self._file.close()
        return open(self.path, "rb")

    async def store(self, blobs: BlobStore, blob: str) -> None:
        """Give the file to ``blobs`` as ``blob`` (the caller checked the hash)."""
        self._file.close()
        path, self.path = self.path, ""
        await blobs.put_file(path, blob)

    def discard(self) -> None:
        """Remove the file (a refused, broken or abandoned upload); harmless twice."""
        self._file.close()
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = ""
