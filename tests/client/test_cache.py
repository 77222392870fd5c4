"""The chunk cache: one download per blob, verified before use (the bytes written, hashed as
they are written), bounded, LRU, pinned files kept; and with the daemon's own download, a bad
body from the master refused."""

import io
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dockercomp.client import cache as cache_module
from dockercomp.client.cache import ChunkCache, Download, HashingFile, place
from dockercomp.client.errors import MasterError
from dockercomp.client.master import PIECE, Backoff, MasterSession
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


# --- hashing as the bytes are written -----------------------------------------------------------


@pytest.fixture
def no_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test in which the cache reads a file back to hash it."""

    def refuse(f: BinaryIO) -> str:
        raise AssertionError("the file was read back to be hashed")

    monkeypatch.setattr(cache_module, "_digest", refuse)


def test_a_download_written_in_order_is_hashed_as_it_is_written(tmp_path: Path, no_read_back: None) -> None:
    h, data = blob(60, 10 * KIB)

    def in_pieces(dest: BinaryIO) -> None:
        dest.write(b"a false start")
        dest.seek(0)
        dest.truncate()  # as MasterSession.download starts, and starts again on a 200 after a cut
        for i in range(0, len(data), 3 * KIB):
            dest.write(memoryview(data)[i : i + 3 * KIB])

    cache = ChunkCache(str(tmp_path), 1 << 20)
    assert Path(cache.acquire(h, in_pieces)).read_bytes() == data
    assert cache.integrity_failures == 0 and cache.usage() == (len(data), 1)


@pytest.mark.parametrize(
    "rewrite",
    [
        pytest.param(lambda f: (f.seek(5), f.write(b"X")), id="a byte rewritten in place"),
        pytest.param(lambda f: f.truncate(KIB), id="cut short after writing"),
        pytest.param(lambda f: (f.seek(2 * KIB), f.write(b"tail")), id="written past its end"),
        pytest.param(lambda f: (f.seek(0), f.write(b"head")), id="its start written again"),
    ],
)
def test_what_is_checked_is_the_file_as_written_not_the_bytes_once_given(
    tmp_path: Path, rewrite: Callable[[BinaryIO], object]
) -> None:
    """The right bytes, then the file changed by a write or truncate out of order: refused,
    as the file no longer holds them."""
    h, data = blob(61, 2 * KIB - 1)

    def download(dest: BinaryIO) -> None:
        dest.write(data)
        rewrite(dest)

    cache = ChunkCache(str(tmp_path), 1 << 20)
    with pytest.raises(IntegrityError):
        cache.acquire(h, download)
    assert cache.integrity_failures == 2 and files(tmp_path) == [] and cache.usage() == (0, 0)


def test_the_right_bytes_written_out_of_order_are_accepted(tmp_path: Path) -> None:
    h, data = blob(62, 2 * KIB)

    def backwards(dest: BinaryIO) -> None:
        dest.seek(KIB)
        dest.write(data[KIB:])
        dest.seek(0)
        dest.write(data[:KIB])

    cache = ChunkCache(str(tmp_path), 1 << 20)
    assert Path(cache.acquire(h, backwards)).read_bytes() == data  # read back, so not refused


OPS = st.lists(  # small files and offsets, so that writes land on, before and past what was written
    st.one_of(
        st.tuples(st.just("write"), st.binary(max_size=8)),
        st.tuples(st.just("seek"), st.integers(0, 16)),
        st.tuples(st.just("read"), st.integers(0, 16)),
        st.tuples(st.just("truncate"), st.one_of(st.none(), st.integers(0, 16))),
    ),
    max_size=16,
)


@settings(max_examples=500, deadline=None)
@given(OPS)
@example([("write", b"abc"), ("truncate", 1), ("seek", 3), ("write", b"de")])  # the cut then written over
@example([("write", b"ab"), ("seek", 1), ("write", b"X"), ("seek", 5), ("write", b"Y"), ("seek", 3), ("write", b"ZZ")])
def test_a_hashing_file_digests_what_it_holds_however_it_was_written(ops: list[tuple[str, object]]) -> None:
    """Against a plain file given the same writes, seeks, reads and truncates (one past the end
    extends a file)."""
    with HashingFile(io.FileIO(os.memfd_create("hashing"), "r+")) as f, open(os.memfd_create("plain"), "r+b") as plain:
        for op, arg in ops:
            getattr(f, op)(arg)
            getattr(plain, op)(arg)
        plain.seek(0)
        held = plain.read()
        assert f.digest() == (digest(held), len(held))
        f.seek(0)
        assert f.read() == held


# --- the daemon's download into the cache, against a master's blob endpoint -------------------


class Blobs(ThreadingHTTPServer):
    """A master's blob endpoint: each GET gets the next of ``bodies`` (the last one again once
    they run out) from the offset its Range asks (206), with a Content-Length of ``length``
    (the body's own when 0), then the connection is closed (a body shorter than its
    Content-Length is cut off)."""

    def __init__(self, bodies: list[bytes], length: int = 0) -> None:
        self.bodies = bodies
        self.length = length
        self.ranges: list[int] = []  # where each GET started
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = int(self.headers.get("Range", "bytes=0-").split("=")[1].rstrip("-"))
                server.ranges.append(start)
                body = server.bodies.pop(0) if len(server.bodies) > 1 else server.bodies[0]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str((server.length or len(body)) - start))
                self.end_headers()
                self.wfile.write(body[start:])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def fetch(self, cache: ChunkCache, blob: str, limit: int) -> str:
        """``blob`` acquired into ``cache`` the way client/attempt.py does, over this endpoint."""
        session = MasterSession(f"http://127.0.0.1:{self.server_port}", backoff=Backoff(0.01, 0.02), token="c.tok")
        return cache.acquire(blob, lambda dest: session.download(blob, dest, tries=3, limit=limit))


@pytest.fixture
def blobs() -> Iterator[list[Blobs]]:
    servers: list[Blobs] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


DATA = bytes(range(256)) * (3 * PIECE // 256 + 7)  # three of the session's pieces and some


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(DATA[:PIECE] + b"X" + DATA[PIECE + 1 :], IntegrityError, id="damaged"),
        pytest.param(DATA[:-1], IntegrityError, id="short"),
        pytest.param(DATA + b"\n", IntegrityError, id="long"),
        pytest.param(DATA + DATA, MasterError, id="past the limit"),
    ],
)
def test_a_bad_body_from_the_master_is_refused_and_nothing_is_kept(
    tmp_path: Path, blobs: list[Blobs], body: bytes, error: type[Exception]
) -> None:
    blobs.append(Blobs([body]))
    cache = ChunkCache(str(tmp_path), 1 << 30)
    with pytest.raises(error):
        blobs[0].fetch(cache, digest(DATA), limit=len(DATA) + PIECE)
    assert files(tmp_path) == [] and cache.usage() == (0, 0)


def test_a_body_cut_off_is_resumed_and_still_hashed_as_written(
    tmp_path: Path, blobs: list[Blobs], no_read_back: None
) -> None:
    blobs.append(Blobs([DATA[: PIECE + 5], DATA], length=len(DATA)))  # the first transfer breaks off mid-piece
    cache = ChunkCache(str(tmp_path), 1 << 30)
    assert Path(blobs[0].fetch(cache, digest(DATA), limit=len(DATA))).read_bytes() == DATA
    assert blobs[0].ranges[0] == 0 and blobs[0].ranges[-1] > 0  # resumed with a Range, not from the start
    assert cache.downloads == 1 and cache.integrity_failures == 0
