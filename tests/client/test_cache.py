"""The chunk cache: one download per blob, verified before use, bounded, LRU, pinned files kept."""

import os
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from dockercomp.client.cache import ChunkCache, Download, place
from dockercomp.protocol.errors import IntegrityError
from dockercomp.protocol.integrity import digest

KIB = 1024


def blob(n: int, size: int = KIB) -> tuple[str, bytes]:
    data = bytes([n % 256]) * size
    return digest(data), data


class Source:
    """Downloads from a dict of blobs, counting them; ``corrupt`` bad transfers first."""

    def __init__(self, *blobs: bytes, corrupt: int = 0, delay: float = 0.0) -> None:
        self.blobs = {digest(b): b for b in blobs}
        self.corrupt = corrupt
        self.delay = delay
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, blob: str) -> Download:
        def download(dest: BinaryIO) -> None:
            with self.lock:
                self.calls += 1
                bad = self.corrupt > 0
                self.corrupt -= 1
            time.sleep(self.delay)
            data = self.blobs[blob]
            dest.write(b"X" + data[1:] if bad else data)

        return download


def fetch(cache: ChunkCache, source: Source, h: str) -> None:
    """Use a blob once: acquire and release it."""
    cache.acquire(h, source(h))
    cache.release(h)


def files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_a_blob_is_downloaded_once_then_served_from_the_cache(tmp_path: Path) -> None:
    h, data = blob(1)
    source = Source(data)
    cache = ChunkCache(str(tmp_path), 1 << 20)
    first = cache.acquire(h, source(h))
    second = cache.acquire(h, source(h))
    assert first == second == cache.path(h)
    assert Path(first).read_bytes() == data
    assert source.calls == cache.downloads == 1 and cache.hits == 1
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o444  # readable by the container's user, by no one writable
    assert cache.usage() == (KIB, 1)


def test_concurrent_users_of_one_blob_share_one_download(tmp_path: Path) -> None:
    h, data = blob(2)
    source = Source(data, delay=0.05)
    cache = ChunkCache(str(tmp_path), 1 << 20)
    paths: list[str] = []
    threads = [threading.Thread(target=lambda: paths.append(cache.acquire(h, source(h)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths == [cache.path(h)] * 8
    assert source.calls == 1


def test_a_download_that_does_not_match_is_fetched_again(tmp_path: Path) -> None:
    h, data = blob(3)
    source = Source(data, corrupt=1)
    cache = ChunkCache(str(tmp_path), 1 << 20)
    assert Path(cache.acquire(h, source(h))).read_bytes() == data
    assert source.calls == 2 and cache.integrity_failures == 1


def test_a_mismatch_that_persists_is_an_integrity_error_and_nothing_is_kept(tmp_path: Path) -> None:
    h, data = blob(4)
    source = Source(data, corrupt=5)
    cache = ChunkCache(str(tmp_path), 1 << 20)
    with pytest.raises(IntegrityError, match=f"input {h} .downloaded 2 times"):
        cache.acquire(h, source(h))
    assert source.calls == 2
    assert cache.usage() == (0, 0) and files(tmp_path) == []  # no file, no part of one
    # the failed acquire left no pin behind: the blob can still be fetched and evicted later
    source.corrupt = 0
    assert Path(cache.acquire(h, source(h))).read_bytes() == data


def test_a_download_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    h, _ = blob(5)

    def broken(dest: BinaryIO) -> None:
        dest.write(b"half")
        raise ConnectionError("cut off")

    cache = ChunkCache(str(tmp_path), 1 << 20)
    with pytest.raises(ConnectionError):
        cache.acquire(h, broken)
    assert files(tmp_path) == [] and cache.usage() == (0, 0)


def test_a_cached_file_damaged_on_disk_is_downloaded_again(tmp_path: Path) -> None:
    h, data = blob(6)
    source = Source(data)
    cache = ChunkCache(str(tmp_path), 1 << 20)
    path = Path(cache.acquire(h, source(h)))
    cache.release(h)
    path.chmod(0o644)
    path.write_bytes(b"rot" + data[3:])
    assert Path(cache.acquire(h, source(h))).read_bytes() == data
    assert source.calls == 2 and cache.integrity_failures == 1


def test_the_least_recently_used_blob_goes_first(tmp_path: Path) -> None:
    (a, da), (b, db), (c, dc), (d, dd) = (blob(n) for n in range(10, 14))
    source = Source(da, db, dc, dd)
    cache = ChunkCache(str(tmp_path), 3 * KIB)
    for h in (a, b, c):
        fetch(cache, source, h)
    fetch(cache, source, a)  # a is used again: b is now the oldest
    cache.acquire(d, source(d))
    cache.release(d)
    assert files(tmp_path) == sorted([a, c, d])
    assert cache.usage() == (3 * KIB, 3)


def test_files_in_use_are_never_evicted(tmp_path: Path) -> None:
    (a, da), (b, db), (c, dc) = (blob(n) for n in range(20, 23))
    source = Source(da, db, dc)
    cache = ChunkCache(str(tmp_path), 2 * KIB)
    for h in (a, b, c):  # all three pinned: over the bound, but nothing in use may go
        cache.acquire(h, source(h))
    assert files(tmp_path) == sorted([a, b, c])
    cache.release(b)
    assert files(tmp_path) == sorted([a, c])  # the first unpinned one goes as soon as it is free
    cache.release(a)
    cache.release(c)
    assert cache.usage() == (2 * KIB, 2)


def test_a_blob_larger_than_the_whole_cache_is_still_served(tmp_path: Path) -> None:
    h, data = blob(30, 4 * KIB)
    cache = ChunkCache(str(tmp_path), 2 * KIB)
    with cache.pinned(h, Source(data)(h), size=len(data)) as path:
        assert Path(path).read_bytes() == data
    assert cache.usage() == (0, 0)  # evicted once nobody uses it


def test_a_restart_keeps_what_was_cached_in_order_of_use(tmp_path: Path) -> None:
    (a, da), (b, db), (c, dc) = (blob(n) for n in range(40, 43))
    source = Source(da, db, dc)
    cache = ChunkCache(str(tmp_path), 2 * KIB)
    for h in (a, b):
        fetch(cache, source, h)
    os.utime(cache.path(a), (time.time() - 100, time.time() - 100))
    os.utime(cache.path(b), (time.time() - 50, time.time() - 50))
    fetch(cache, source, a)  # a used last: its time is now
    (tmp_path / a[:2] / ".part-cut-short").write_bytes(b"half a download")
    again = ChunkCache(str(tmp_path), 2 * KIB)
    assert again.usage() == (2 * KIB, 2)
    assert not list(tmp_path.rglob(".part-*"))
    fetch(again, source, c)
    assert files(tmp_path) == sorted([a, c])  # b was the least recently used


def test_place_links_the_cached_file(tmp_path: Path) -> None:
    h, data = blob(50)
    cache = ChunkCache(str(tmp_path / "cache"), 1 << 20)
    path = cache.acquire(h, Source(data)(h))
    (tmp_path / "input").mkdir()
    place(path, str(tmp_path / "input" / "chunk"))
    assert (tmp_path / "input" / "chunk").read_bytes() == data
    assert os.stat(path).st_ino == os.stat(tmp_path / "input" / "chunk").st_ino


def test_a_malformed_hash_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path), 1 << 20)
    with pytest.raises(ValueError, match="32 lowercase hex"):
        cache.acquire("../../etc/passwd", Source()("x"))
