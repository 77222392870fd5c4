"""The chunk cache: input blobs by their xxh3-128 hash, on disk, within a size bound.

A chunk shared by several units (replicas across jobs, a reduce reading map outputs) is
downloaded once. Every file is checked against its hash before it is handed out, after a
download (the bytes written, hashed as they are written) and again when it comes from the
cache (read back), so neither a bad transfer nor a damaged disk ever reaches a container.
Files in use are pinned and never evicted; the least recently used of the others go first
when the bound is passed.
"""

import io
import logging
import os
import shutil
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, BinaryIO

import xxhash

from dockercomp.protocol.errors import IntegrityError
from dockercomp.protocol.integrity import HASH_RE, check_hash, digest_stream

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)
READ = 1 << 20
STRIPES = 64

Download = Callable[[BinaryIO], None]
"""Writes a blob's bytes into the file it is given (from the start, as often as called)."""


class ChunkCache:
    """Files ``ROOT/ab/HASH``, read-only for everyone (containers run as another user), at
    most ``max_bytes`` in all unless pinned files alone need more."""

    def __init__(self, root: str, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.downloads = 0  # blobs fetched from the master
        self.hits = 0  # blobs found here, intact
        self.integrity_failures = 0  # downloads or cached files that did not match their hash
        self._lock = threading.Lock()  # guards the index; never held during I/O of a whole blob
        self._entries: OrderedDict[str, int] = OrderedDict()  # hash -> size, least recently used first
        self._pins: Counter[str] = Counter()
        self._fetch_locks = [threading.Lock() for _ in range(STRIPES)]  # one download per blob at a time
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._load()

    # -- what the daemon calls ------------------------------------------------------------------
    def acquire(self, blob: str, download: Download, *, size: int = 0, tries: int = 2) -> str:
        """Pin ``blob`` and return the path of its verified file, downloading it when it is
        not here. A download that does not match the hash is deleted and fetched again, up to
        ``tries`` times; then IntegrityError, and nothing is kept. Pair with ``release``."""
        check_hash(blob, "input hash")
        with self._lock:
            self._pins[blob] += 1
        try:
            with self._fetch_locks[int(blob[:4], 16) % STRIPES]:
                return self._verified(blob, download, size, tries)
        except BaseException:
            self.release(blob)
            raise

    def release(self, blob: str) -> None:
        """Unpin a blob acquired before; it may be evicted from now on."""
        with self._lock:
            self._pins[blob] -= 1
            if self._pins[blob] <= 0:
                del self._pins[blob]
            self._evict(0)

    @contextmanager
    def pinned(self, blob: str, download: Download, *, size: int = 0) -> Iterator[str]:
        path = self.acquire(blob, download, size=size)
        try:
            yield path
        finally:
            self.release(blob)

    def usage(self) -> tuple[int, int]:
        """Bytes and files held now."""
        with self._lock:
            return sum(self._entries.values()), len(self._entries)

    def path(self, blob: str) -> str:
        return os.path.join(self.root, blob[:2], blob)

    # -- inside ------------------------------------------------------------------------------
    def _verified(self, blob: str, download: Download, size: int, tries: int) -> str:
        path = self.path(blob)
        with self._lock:
            cached = blob in self._entries
        if cached:
            actual = _hash_file(path)
            if actual == blob:
                with self._lock:
                    self._entries.move_to_end(blob)
                self.hits += 1
                os.utime(path)  # the order of use survives a restart
                return path
            self.integrity_failures += 1
            log.warning("cached input %s is damaged (hashes to %s); downloading it again", blob, actual)
            self._forget(blob)
        with self._lock:
            self._evict(size)  # make room before the bytes arrive
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        actual = ""
        for attempt in range(1, tries + 1):
            actual = self._download(blob, download, path)
            if actual == blob:
                return path
            self.integrity_failures += 1
            log.warning(
                "input %s: download %d of %d hashes to %s; %s",
                blob, attempt, tries, actual, "downloading it again" if attempt < tries else "giving up",
            )  # fmt: skip
        raise IntegrityError(blob, actual, f"input {blob} (downloaded {tries} times)")

    def _download(self, blob: str, download: Download, path: str) -> str:
        """One download into a temporary file beside ``path``, renamed to ``path`` (and indexed)
        only if the bytes written hash to ``blob``, else deleted; what they hash to."""
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".part-")
        try:
            with HashingFile(io.FileIO(fd, "r+")) as f:
                download(f)
                self.downloads += 1
                actual, size = f.digest()
            if actual == blob:
                os.chmod(tmp, 0o444)
                os.replace(tmp, path)
                with self._lock:
                    self._entries[blob] = size
                    self._entries.move_to_end(blob)
                    self._evict(0)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return actual

    def _forget(self, blob: str) -> None:
        with self._lock:
            self._entries.pop(blob, None)
        with suppress(FileNotFoundError):
            os.unlink(self.path(blob))

    def _evict(self, need: int) -> None:
        """Drop least recently used unpinned files until ``need`` more bytes fit. Called with
        the lock held; unlinking a file is quick."""
        total = sum(self._entries.values())
        for blob in list(self._entries):
            if total + need <= self.max_bytes:
                return
            if self._pins.get(blob):
                continue
            total -= self._entries.pop(blob)
            with suppress(FileNotFoundError):
                os.unlink(self.path(blob))
            log.debug("evicted %s from the chunk cache", blob)

    def _load(self) -> None:
        """Index what an earlier run left, oldest use first; parts of downloads cut short are removed."""
        found: list[tuple[float, str, int]] = []
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                ours = HASH_RE.fullmatch(entry.name) and sub.name == entry.name[:2]
                if ours and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found.append((stat.st_mtime, entry.name, stat.st_size))
                elif entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
        with self._lock:
            for _, blob, size in sorted(found):
                self._entries[blob] = size
            self._evict(0)


class HashingFile(io.BufferedRandom):
    """The file a download writes, hashing the bytes as they are written, so that checking them
    takes no second pass over the file. The running hash is of the file's bytes from its start
    as long as it is written in order from there (as ``MasterSession.download`` writes it,
    starting again from 0 when the master sends the whole blob again); written or truncated any
    other way, ``digest`` reads the file back instead."""

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__(raw)
        self._restart()

    def _restart(self) -> None:
        self._hasher: xxhash.xxh3_128 | None = xxhash.xxh3_128()
        self._hashed = 0  # bytes the hasher has seen, the first of the file

    def write(self, data: "ReadableBuffer", /) -> int:
        at = self.tell()
        if at == 0:
            self._restart()
        elif at != self._hashed:  # a write elsewhere than after what was hashed: no running hash now
            self._hasher = None
        written = super().write(data)  # all of it, or an exception
        if self._hasher is not None:
            self._hasher.update(data)
        self._hashed += written
        return written

    def truncate(self, pos: int | None = None, /) -> int:
        size = super().truncate(pos)
        if size == 0:
            self._restart()
        elif size < self._hashed:
            self._hasher = None
        return size

    def digest(self) -> tuple[str, int]:
        """The hash of the whole file and its size, as it is now."""
        self.flush()
        size = os.fstat(self.fileno()).st_size
        if self._hasher is not None and size == self._hashed:
            return self._hasher.hexdigest(), size
        self.seek(0)
        return _digest(self), size


def _digest(f: BinaryIO) -> str:
    """The hash of what is left to read of ``f``."""
    return digest_stream(iter(lambda: f.read(READ), b""))


def _hash_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return _digest(f)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def place(source: str, dest: str) -> None:
    """Put a cached file at ``dest`` (an attempt's input directory): a hard link when both are
    on one file system, else a copy. The cached file is read-only and the container sees its
    input directory read-only, so sharing the inode is safe."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
        os.chmod(dest, 0o444)
