"""The master never stalls: while one heavy request runs, a cheap one is still answered at once.

Each API test runs one heavy request against a real master process (``dockercomp server``)
while a probe, a second process whose own thread sends ``GET /api/v1/health`` every 10 ms,
measures how long each of those cheap requests took. The probe is a process of its own so that
the test process's work (encoding a 35 MB body, reading a long reply) cannot hold the probe's
GIL and be taken for the master's. The heavy requests, on one master:

- ``POST /chunks?by=lines&size=1`` on a body of 250,000 lines (250,000 chunks, each a row of
  the blob store), and ``POST /chunks`` on a 48 MiB body cut into 1 MiB chunks (files);
- ``POST /jobs`` naming 1,000,000 chunks (the most a job may name, MAX_UNITS; its JSON body is
  35 MB, within the 64 MiB body limit): the 250,000 chunks four times over;
- ``POST /jobs`` as msgpack naming 250,000 chunks;
- ``POST /jobs`` of a sweep of SWEEP (100,000) units (the slices are the same for the most a
  job file may make, MAX_SWEEP: 1,000,000 units took 48.9 s, probe p99 17 ms, worst 37 ms);
- ``GET /jobs/ID`` of the big job, whose status counts its units per state;
- ``GET /jobs/ID/units`` pages (1,000 units each, the most a page has) all over the big job;
- ``GET /jobs/ID/results?partial=1`` with every other unit done, and ``GET /jobs/ID/results``
  once the job is done: 1,000,000 outputs, streamed.

A job of 1,000,000 done units is made by writing the master's SQLite file from the test (WAL
lets another process write it, as several masters sharing it do): running a million results
through the client protocol would take far longer than the download it prepares. Each unit's
output is its own input chunk, so the result is the upload itself, four times over.

The bounds asserted (p99 under 100 ms, worst under 1 s) held with room on a shared, noisy
2-core machine (load 2-4 from other work), the store on disk. Measured there,
probe p99 / worst per heavy request (an idle master: 4 / 6 ms):

======================================  ============  ===================================
heavy request                           after         before (100,000 units, same probe)
======================================  ============  ===================================
/chunks, 250,000 one-line chunks        14 / 19 ms    3.8 s held (100,000 lines)
/chunks, 48 MiB in 1 MiB chunks         14 / 14 ms
POST /jobs, 1,000,000 chunks (JSON)     16 / 55 ms    2.0 s held (100,000 chunks)
GET /jobs/ID of that job, 10 times      13 / 16 ms    0.5 s held each (its unit counts)
POST /jobs, 250,000 chunks (msgpack)    15 / 33 ms
POST /jobs, sweep of 100,000 units      15 / 29 ms    2.0 s held
GET /jobs/ID/units, 201 deep pages      32 / 33 ms    88 / 120 ms
results?partial=1, 250,000 units        14 / 24 ms    3.1 s held
results, 1,000,000 units                11 / 33 ms    6.8 s held
======================================  ============  ===================================

Before checkpoints moved off the loop, a COMMIT that checkpointed SQLite's log waited up to
0.9 s for fsync when other work kept the disk busy. The file runs in about 90 s.

The store tests at the end check, on SQLite and on MongoDB (mongomock-motor unless
DOCKERCOMP_TEST_MONGO_URL is set), that create_job writes in slices with the loop free between
them, that no half-made job is ever seen or leased, and that a failure leaves nothing behind.
"""

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import requests

from dockercomp.protocol import codec
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import params_json
from dockercomp.protocol.sliced import Unexpected
from dockercomp.server.errors import NotFound
from dockercomp.server.models import InputFile
from dockercomp.server.scientist import MAX_UNITS, decode_sliced
from dockercomp.server.store.base import Pacer
from tests.masters import MasterProcess, Masters
from tests.server.test_store_contract import (  # noqa: F401 - store is the fixture the store tests run on
    T0,
    Backend,
    chunks,
    clients,
    contract,
    job_spec,
    lease,
    ok,
    store,
)
from tests.sim import MSGPACK, job_file, job_status, pack, unpack

T = TypeVar("T")
LINES = 250_000  # the upload's lines, one chunk each
SWEEP = 100_000  # the units of the sweep
REPEAT = MAX_UNITS // LINES  # the big job names every chunk this many times: MAX_UNITS chunks
EVERY = 0.010  # seconds between the probe's requests
P99_BOUND = 0.100  # seconds: the goal, "no request holds the event loop for more than 100 ms"
# seconds: the worst single probe. One probe in hundreds has been seen at 0.4 s with the store
# on a disk that other work kept busy (the p99 then was 24 ms); a request that holds the loop,
# as before these paths were sliced, holds every probe in its time, 2 to 7 s
MAX_BOUND = 1.0
MIN_SAMPLES = 20  # probes a heavy request must have overlapped for its figures to mean anything

# the probe: a thread sends GET URL every EVERY seconds until stdin closes, then prints
# [[sent_at, seconds], ...] (sent_at on the monotonic clock, which every process shares)
PROBE = r"""
import json, sys, threading, time
import requests

url, every = sys.argv[1], float(sys.argv[2])
samples, done = [], threading.Event()

def probe():
    session = requests.Session()
    while not done.is_set():
        sent = time.monotonic()
        ok = session.get(url, timeout=60).status_code == 200
        took = time.monotonic() - sent
        samples.append([sent, took if ok else -1.0])
        if len(samples) == 1:
            print("ready", flush=True)
        time.sleep(max(0.0, every - (time.monotonic() - sent)))

thread = threading.Thread(target=probe, daemon=True)
thread.start()
sys.stdin.read()
done.set()
thread.join()
print(json.dumps(samples), flush=True)
"""


@dataclass(frozen=True)
class Latency:
    """The probe's requests that overlapped one heavy request: how many, their p99 and worst."""

    what: str
    heavy: float  # seconds the heavy request took
    samples: list[float]

    @property
    def worst(self) -> float:
        return max(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def check(self) -> None:
        print(f"\n{self}", file=sys.stderr)
        assert all(s >= 0 for s in self.samples), f"{self.what}: a health probe failed during it"
        assert len(self.samples) >= MIN_SAMPLES, f"{self.what}: only {len(self.samples)} probes overlapped it"
        assert self.p99 < P99_BOUND, f"{self}: p99 past {P99_BOUND * 1000:.0f} ms"
        assert self.worst < MAX_BOUND, f"{self}: worst past {MAX_BOUND * 1000:.0f} ms"

    def __str__(self) -> str:
        return (
            f"{self.what}: {self.heavy:.1f}s, {len(self.samples)} probes, "
            f"p99 {self.p99 * 1000:.0f} ms, worst {self.worst * 1000:.0f} ms"
        )


def probed(master: MasterProcess, what: str, heavy: Callable[[], T]) -> tuple[T, Latency]:
    """Run ``heavy()`` while the probe sends its cheap requests; its result, and the latency of
    every probe that overlapped it."""
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, f"{master.api}/health", str(EVERY)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert probe.stdin is not None and probe.stdout is not None
    try:
        assert probe.stdout.readline().strip() == "ready"
        time.sleep(0.1)  # a few probes before, so the first one's connection set-up is not counted
        start = time.monotonic()
        result = heavy()
        end = time.monotonic()
        time.sleep(0.1)
        probe.stdin.close()
        samples = json.loads(probe.stdout.read())
        assert probe.wait(30) == 0
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    overlapping = [took for sent, took in samples if sent <= end and (took < 0 or sent + took >= start)]
    return result, Latency(what, end - start, overlapping)


def lines() -> list[bytes]:
    return [b"%07d\n" % i for i in range(LINES)]


@dataclass
class Big:
    """The module's master and what the heavy requests made on it, in order."""

    master: MasterProcess
    idle: "Latency | None" = None  # the probe against the master doing nothing: the machine's own noise
    chunks: list[dict[str, Any]] | None = None
    job: str = ""

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.master.api}{path}", headers=self.master.headers | kwargs.pop("headers", {}),
                             timeout=600, **kwargs)  # fmt: skip

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.master.api}{path}", headers=self.master.headers, timeout=600, **kwargs)

    def units(self, job: str, offset: int, limit: int = 1000) -> list[dict[str, Any]]:
        response = self.get(f"/jobs/{job}/units", params={"offset": offset, "limit": limit})
        assert response.status_code == 200, response.text
        return response.json()["units"]

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """The master's own SQLite file, opened beside it as a second master would."""
        with closing(sqlite3.connect(self.master.data_dir / "dockercomp.db", isolation_level=None)) as db:
            db.execute("PRAGMA busy_timeout = 60000")
            yield db


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    """The master, its store on disk: its checkpoints, which wait for the disk, run on a thread
    of their own (server/store/sqlite/checkpoint.py), never inside a commit on the loop."""
    masters = Masters(tmp_path_factory.mktemp("stall"))
    try:
        big = Big(masters.start())
        _, big.idle = probed(big.master, "an idle master (the noise floor)", lambda: time.sleep(2))
        print(f"\n{big.idle}", file=sys.stderr)
        yield big
    finally:
        masters.close()


@pytest.fixture(scope="module")
def chunked(big: Big) -> Latency:
    """``POST /chunks`` cuts LINES chunks of one line each out of one upload."""
    body = b"".join(lines())
    reply, latency = probed(
        big.master, f"/chunks of {LINES} lines",
        lambda: big.post("/chunks", params={"by": "lines", "size": "1"}, data=body),
    )  # fmt: skip
    assert reply.status_code == 201, reply.text[:500]
    big.chunks = reply.json()["chunks"]
    return latency


@pytest.fixture(scope="module")
def created(big: Big, chunked: Latency) -> Latency:
    """``POST /jobs`` naming MAX_UNITS chunks, as JSON (what the CLI sends)."""
    assert big.chunks is not None
    body = json.dumps({"job": job_file("big"), "chunks": [c["hash"] for c in big.chunks] * REPEAT}).encode()
    reply, latency = probed(
        big.master, f"a job of {MAX_UNITS} chunks ({len(body) >> 20} MiB of JSON)",
        lambda: big.post("/jobs", data=body, headers={"Content-Type": "application/json"}),
    )  # fmt: skip
    assert reply.status_code == 201, reply.text[:500]
    big.job = reply.json()["job"]
    return latency


def test_chunking_many_lines_never_stalls(big: Big, chunked: Latency) -> None:
    assert big.chunks == [{"hash": digest(line), "size": len(line)} for line in lines()]
    sample = big.chunks[LINES // 2]["hash"]
    assert big.get(f"/blobs/{sample}").content == b"%07d\n" % (LINES // 2)
    chunked.check()


def test_chunking_a_large_body_never_stalls(big: Big) -> None:
    line = b"a line of a large upload, cut into chunks of a mebibyte each\n"
    body = line * ((48 << 20) // len(line))
    reply, latency = probed(
        big.master, f"/chunks of {len(body) >> 20} MiB in 1 MiB chunks",
        lambda: big.post("/chunks", params={"by": "lines", "size": "1MiB"}, data=body, headers={"Accept": MSGPACK}),
    )  # fmt: skip
    assert reply.status_code == 201, reply.text[:500]
    assert reply.headers["Content-Type"] == MSGPACK
    per_chunk = (1 << 20) // len(line) * len(line)  # whole lines only
    expected = [body[i : i + per_chunk] for i in range(0, len(body), per_chunk)]
    assert unpack(reply.content) == {"chunks": [{"hash": digest(c), "size": len(c)} for c in expected]}
    assert big.get(f"/blobs/{digest(expected[-1])}").content == expected[-1]
    latency.check()


def test_a_job_of_a_million_chunks_never_stalls(big: Big, created: Latency) -> None:
    status = job_status(big.master.url, big.job)
    assert (status["state"], status["units"]["ready"], sum(status["units"].values())) == (
        "running", MAX_UNITS, MAX_UNITS,
    )  # fmt: skip
    created.check()


@pytest.fixture(scope="module")
def packed(big: Big, chunked: Latency) -> tuple[str, Latency]:
    """``POST /jobs`` as msgpack naming every chunk once, held."""
    assert big.chunks is not None
    body = pack({"job": job_file("packed"), "chunks": [c["hash"] for c in big.chunks], "hold": True})
    reply, latency = probed(
        big.master, f"a msgpack job of {LINES} chunks",
        lambda: big.post("/jobs", data=body, headers={"Content-Type": MSGPACK, "Accept": "application/json"}),
    )  # fmt: skip
    assert reply.status_code == 201, reply.text[:500]
    return reply.json()["job"], latency


def test_the_status_of_a_big_job_never_stalls(big: Big, created: Latency) -> None:
    """A job's status counts its units per state (a million of them: half a second of SQLite)."""
    statuses, latency = probed(big.master, "10 statuses of the big job", lambda: [job_status(big.master.url, big.job)
                                                                              for _ in range(10)])  # fmt: skip
    assert all(sum(status["units"].values()) == MAX_UNITS for status in statuses)
    latency.check()


def test_a_msgpack_job_of_many_chunks_never_stalls(big: Big, packed: tuple[str, Latency]) -> None:
    job, latency = packed
    status = job_status(big.master.url, job)
    assert (status["state"], status["units"]["suspended"]) == ("held", LINES)
    latency.check()


def test_a_sweep_of_the_most_units_never_stalls(big: Big) -> None:
    body = {"job": job_file("sweep", sweep={"start": 0, "end": SWEEP})}
    reply, latency = probed(big.master, f"a sweep of {SWEEP} units", lambda: big.post("/jobs", json=body))
    assert reply.status_code == 201, reply.text[:500]
    job = reply.json()["job"]
    assert job_status(big.master.url, job)["units"]["ready"] == SWEEP
    for offset in (0, SWEEP - 1000):
        assert [u["index"] for u in big.units(job, offset)] == list(range(offset, offset + 1000))
    with big.database() as db:  # no unit stores an input, and no params.json blob is written
        rows = db.execute("SELECT idx, inputs FROM units WHERE job_id = ? AND idx % 9999 = 0", (job,)).fetchall()
    assert len(rows) == SWEEP // 9999 + 1 and {inputs for _, inputs in rows} == {"[]"}
    params = params_json({"START": 0, "END": 1})
    assert big.get(f"/blobs/{digest(params)}").status_code == 404
    latency.check()


def test_listing_units_of_a_big_job_never_stalls(big: Big, created: Latency) -> None:
    offsets = [*range(0, MAX_UNITS - 1000, MAX_UNITS // 200), MAX_UNITS - 1000]
    listed, latency = probed(
        big.master, f"{len(offsets)} pages of 1000 units", lambda: [big.units(big.job, o) for o in offsets]
    )
    for offset, units in zip(offsets, listed, strict=True):
        assert [u["index"] for u in units] == list(range(offset, offset + 1000))
        assert [(u["state"], u["attempts"]) for u in units] == [("ready", [])] * 1000
    assert big.units(big.job, MAX_UNITS - 1, 10) == [listed[-1][-1]]
    assert big.units(big.job, MAX_UNITS) == []
    latency.check()


def _download(big: Big, job: str, partial: bool) -> tuple[int, bytes]:
    with big.get(f"/jobs/{job}/results", params={"partial": int(partial)}, stream=True) as response:
        return response.status_code, b"".join(response.iter_content(1 << 20))


def _mark_done(big: Big, job: str, where: str = "1") -> None:
    """Units done with their own input as output (a canonical output is a stored blob)."""
    with big.database() as db:
        db.execute(
            "UPDATE units SET state = 'done', wanted = 0, canonical_hash = json_extract(inputs, '$[0][1]'),"
            f" canonical_size = json_extract(inputs, '$[0][2]') WHERE job_id = ? AND {where}",
            (job,),
        )


def test_partial_results_of_a_big_job_never_stall(big: Big, packed: tuple[str, Latency]) -> None:
    job, _ = packed
    _mark_done(big, job, "idx % 2 = 0")
    (status, data), latency = probed(big.master, f"partial results of {LINES} units", lambda: _download(big, job, True))
    assert status == 200
    assert data == b"".join(lines()[::2])
    latency.check()


def test_final_results_of_a_big_job_never_stall(big: Big, created: Latency) -> None:
    _mark_done(big, big.job)
    with big.database() as db:
        db.execute("UPDATE jobs SET state = 'done', done_map = n_map, finished_at = ? WHERE id = ?",
                   (time.time(), big.job))  # fmt: skip
    assert job_status(big.master.url, big.job)["state"] == "done"
    (status, data), latency = probed(
        big.master, f"the results of {MAX_UNITS} units", lambda: _download(big, big.job, False)
    )
    assert status == 200
    assert data == b"".join(lines()) * REPEAT
    latency.check()


# -- a big body, decoded in slices ------------------------------------------------------------

BODIES = [
    {"job": {"name": "x", "env": {"A": "1"}}, "chunks": ["a" * 32, "b" * 32], "hold": False},
    {"chunks": [], "nested": [[1, 2], {"k": [3]}], "n": 1.5, "none": None, "t": True},
    {},
    {"chunks": list(range(2500))},  # several slices
]


def sliced(encoded: bytes, ctype: str = codec.JSON, cut: int = 0) -> Any:
    """decode_sliced on a body that arrived whole, or in pieces of ``cut`` bytes."""
    pieces = [encoded[i : i + cut] for i in range(0, len(encoded), cut)] if cut else [encoded]
    return asyncio.run(decode_sliced(pieces, ctype))


@pytest.mark.parametrize("cut", [0, 1, 7])
@pytest.mark.parametrize("body", BODIES)
def test_the_sliced_decoders_read_what_codec_reads(body: dict[str, Any], cut: int) -> None:
    for encoded in (json.dumps(body).encode(), json.dumps(body, indent=2).encode(), b" \n" + codec.dump_json(body)):
        assert sliced(encoded, cut=cut) == codec.decode(encoded, codec.JSON) == body
    packed = codec.pack(body)
    assert sliced(packed, codec.MSGPACK, cut) == codec.decode(packed, codec.MSGPACK) == body


@pytest.mark.parametrize(
    "encoded", [b'{"dup": 1, "dup": [2, 3]}', b'{"a":[ ]  ,"b" :{}}\n', '{"a": ["\u00e9"]}'.encode("utf-8-sig")]
)
def test_the_sliced_json_decoder_reads_odd_bodies_as_codec_does(encoded: bytes) -> None:
    assert sliced(encoded) == sliced(encoded, cut=1) == codec.decode(encoded, codec.JSON)


@pytest.mark.parametrize(
    "encoded",
    [b"[1, 2]", b'{"a": [1, 2,]}', b'{"a": 1,}', b'{"a": 1} x', b'{"a" 1}', b'{"a": [1 2]}', b'{"a": "\\ud800"}', b"{"],
)
def test_the_sliced_json_decoder_leaves_the_rest_to_codec(encoded: bytes) -> None:
    """Anything but a well-formed object is left to codec.decode, which then answers as ever."""
    for cut in (0, 1, 3):
        with pytest.raises(Unexpected):
            sliced(encoded, cut=cut)


@pytest.mark.parametrize("encoded", [codec.pack([1, 2]), codec.pack({1: 2}), codec.pack({"a": [1]}) + b"\x01", b"\x82"])
def test_the_sliced_msgpack_decoder_leaves_the_rest_to_codec(encoded: bytes) -> None:
    for cut in (0, 1):
        with pytest.raises(Unexpected):
            sliced(encoded, codec.MSGPACK, cut)


# -- the stores: create_job in slices (each test runs on SQLite and on MongoDB) -------------------


class Ticker:
    """A task that counts how often the event loop let it run."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.ticks += 1

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
def eager_pacer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Pacer lets the loop run after every slice, not only after 10 ms of work."""
    monkeypatch.setattr(Pacer, "BUDGET", 0.0)


async def watched_units(
    b: Backend, n: int, fail_at: int | None = None, seen: list[tuple[int, int, int, int]] | None = None
) -> AsyncIterator[list[InputFile]]:
    """``n`` units for create_job that look, before each one, at what the rest of the master
    sees meanwhile: (units made so far, jobs listed, units leased, loop turns of others)."""
    ticker, client = Ticker(), (await clients(b.store, 1))[0]
    try:
        for i, inputs in enumerate(chunks(n)):
            if i == fail_at:
                raise RuntimeError("the source of the units broke")
            if seen is not None and i % b.store.unit_slice == 0:
                seen.append((i, len(await b.store.list_jobs()), len(await lease(b.store, client, 5)), ticker.ticks))
            yield inputs
    finally:
        ticker.stop()


async def unit_rows(b: Backend) -> int:
    """Every unit the store holds, of any job or none (a peek under the interface)."""
    if b.name == "sqlite":
        with closing(sqlite3.connect(b.tmp_path / "store.db")) as db:
            return int(db.execute("SELECT COUNT(*) FROM units").fetchone()[0])
    return int(await b.store._units.count_documents({}))  # type: ignore[attr-defined]


@pytest.mark.usefixtures("eager_pacer")
@contract
async def test_a_job_is_written_in_slices_and_seen_only_whole(b: Backend) -> None:
    b.store.unit_slice = 4
    seen: list[tuple[int, int, int, int]] = []
    job = await b.store.create_job(job_spec(), watched_units(b, 10, seen=seen), T0)
    assert [(i, jobs, leased) for i, jobs, leased, _ in seen] == [(0, 0, 0), (4, 0, 0), (8, 0, 0)]
    ticks = [t for *_, t in seen]
    assert ticks[0] < ticks[1] < ticks[2], f"the loop ran nothing else between slices: {ticks}"
    assert (await b.store.get_job(job.id)).n_map == 10
    assert [u.idx for u in await b.store.list_units(job.id, 0, 100)] == list(range(10))
    assert [u.inputs for u in await b.store.list_units(job.id, 7, 2)] == chunks(10)[7:9]
    assert [j.id for j in await b.store.list_jobs()] == [job.id]


@pytest.mark.usefixtures("eager_pacer")
@contract
async def test_a_job_whose_units_fail_midway_leaves_nothing(b: Backend) -> None:
    b.store.unit_slice = 3
    with pytest.raises(RuntimeError, match="broke"):
        await b.store.create_job(job_spec(), watched_units(b, 10, fail_at=7), T0)
    assert await b.store.list_jobs() == []
    assert await unit_rows(b) == 0
    job = await b.store.create_job(job_spec(), chunks(2), T0)  # the store is none the worse
    assert (await b.store.get_job(job.id)).n_map == 2 and await unit_rows(b) == 2


@contract
async def test_a_page_of_units_has_its_attempts_in_one_call(b: Backend) -> None:
    s = b.store
    job = await s.create_job(job_spec(redundancy={"replicas": 2, "quorum": 2, "max_attempts": 4}), chunks(3), T0)
    first, second = await clients(s, 2)
    await lease(s, first, 2)
    await lease(s, second, 1)
    units = await s.list_units(job.id)
    found = await s.list_unit_attempts([u.id for u in units])
    assert found == {u.id: await s.list_attempts(u.id) for u in units if await s.list_attempts(u.id)}
    assert sorted(len(a) for a in found.values()) == [1, 2]
    assert await s.list_unit_attempts([]) == {}


@contract
async def test_a_page_of_outputs_is_what_the_units_say(b: Backend) -> None:
    s = b.store
    job = await s.create_job(job_spec(), chunks(5), T0)
    (client,) = await clients(s, 1)
    (grant,) = await lease(s, client, 1)
    assert [a.accepted for a in await s.record_results(client, [ok(grant.attempt, b"out")], T0)] == [True]
    units = await s.list_units(job.id, 0, 5)
    assert [tuple(o) for o in await s.list_outputs(job.id, 0, 5)] == [
        (u.idx, u.kind, u.canonical_hash, u.canonical_size) for u in units
    ]
    assert (await s.list_outputs(job.id, 0, 1))[0].canonical_hash == digest(b"out")
    assert [o.idx for o in await s.list_outputs(job.id, 3, 10)] == [3, 4]
    with pytest.raises(NotFound):
        await s.list_outputs("nope")
