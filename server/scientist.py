"""The scientist's API under /api/v1/ (JSON, or msgpack when asked): create jobs, chunk and
upload input, follow progress, download results, list jobs and clients.

A job may have a million units, so nothing here handles them all in one go on the event
loop: a big body is decoded a slice at a time, units are checked, stored and written in
slices (store.base.Pacer lets the loop serve other requests between them), a raw upload is
spooled to a file and chunked by a worker thread, and long replies are sent a page at a time.
"""

import array
import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from typing import Any, cast

import msgpack

from dockercomp.protocol import codec, sliced
from dockercomp.protocol.chunking import chunk_stream
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.images import PINNED_RE
from dockercomp.protocol.integrity import check_hash
from dockercomp.protocol.jobfile import JobSpec, docker_arch, parse_jobfile
from dockercomp.protocol.limits import INT64_MAX

from . import images
from .auth import Role
from .blobs import Upload
from .errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests
from .handlers import BaseHandler, parse_int
from .lifecycle import JobState, UnitState, Verb, drmaa2_state, result_units
from .matching import shortfall
from .models import Attempt, Image, InputFile, Job, Unit
from .store.base import Output, Pacer, UnitInputs, map_inputs, sweep_inputs

MAX_UNITS = 1_000_000
MAX_OWNER_JOBS = 100_000  # a scientist's jobs looked at for the quotas
OPEN_UNITS = ("ready", "running", "suspended")  # the unit states that count against a quota
QUOTA_RETRY = 60  # seconds a refused scientist is told to wait
SLICE = 1 << 20
BIG_BODY = 1 << 20  # bytes from which a job's body is decoded a slice at a time
ITEMS = 100  # chunks checked between two looks at the Pacer
PAGE = 250  # units listed in one query; items of a reply per write and flush
RESULTS_PAGE = 1000  # units whose outputs are read in one query (list_outputs), written, flushed
BLOB_BATCH = 250  # small blobs stored at once, in one transaction of the blob store: chunks of an upload ...
CHUNK_BYTES = 16 << 20  # ... or as many as make this many bytes; a sweep's params.json files


class JobsBase(BaseHandler):
    async def job(self, job_id: str) -> Job:
        """The job, if the caller may see it; another scientist's job is as good as unknown."""
        job = await self.master.store.get_job(job_id)
        if not self.caller.owns(job.owner):
            raise NotFound(f"no job {job_id!r:.40}")
        return job


class JobsHandler(JobsBase):
    pace: Pacer  # one for the whole of a POST: each heavy step in it gives the loop its turn

    async def get(self) -> None:
        limit = self.int_arg("limit", 100, 1, 10_000)
        owner = None if self.caller.role == Role.OPERATOR else self.caller.name
        jobs = await self.master.store.list_jobs(limit, owner)
        self.reply({"jobs": [job.to_json() for job in jobs]})

    async def post(self) -> None:
        """Create a job from ``{"job": JOBFILE, "chunks": [HASH, ...], "hold": false}``; every
        chunk must have been uploaded first. A sweep job gives no chunks: the master stores each
        unit's params.json itself. All units are made, or none is: the job is seen only once
        every unit is written (Store.create_job). A held job starts no unit until it is released."""
        self.pace = Pacer()
        payload = await self._payload()
        if not isinstance(payload, dict) or set(payload) - {"job", "chunks", "hold"}:
            raise BadRequest('body must be {"job": {...job file...}, "chunks": ["<hash>", ...], "hold": false}')
        hold = payload.get("hold", False)
        if not isinstance(hold, bool):
            raise BadRequest("hold must be true or false")
        spec = await self._pinned(parse_jobfile(payload.get("job")))
        chunks = payload.pop("chunks", None)
        if isinstance(chunks, list):  # a full garbage collection walks a list item by item, never a tuple of strings
            chunks = tuple(chunks)
            await self.pace()
        if self.caller.role != Role.OPERATOR:  # the scientist's quotas (the operator has none)
            count = len(spec.sweep) if spec.sweep is not None else len(chunks) if isinstance(chunks, tuple) else 0
            await self._quota(count)
        units: UnitInputs
        if spec.sweep is not None:
            if chunks:
                raise BadRequest("a sweep job takes no chunks: each unit's input is its params.json")
            units = sweep_inputs(len(spec.sweep))
        else:
            units = await self._chunk_units(chunks)
        job = await self.master.store.create_job(spec, units, self.master.now(), self.caller.name, held=hold)
        await self.pace.now()
        del units, chunks  # a million hashes take a moment to free: here, right after the loop's turn
        self.reply({"job": job.id, "image": spec.image}, status=201)

    async def _payload(self) -> Any:
        """The body as ``payload()`` decodes it; a big one (a job naming a million chunks is a
        35 MB body) a slice at a time, which gives the same value, and for anything the slices
        do not expect, ``payload()`` decodes it whole and gives the same value or error."""
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        pieces = self._chunks  # the body as it arrived (BaseHandler.data_received): no 35 MB copy of it
        if sum(map(len, pieces)) < BIG_BODY or ctype not in (codec.JSON, codec.MSGPACK):
            return self.payload()
        try:
            return await decode_sliced(pieces, ctype, self.pace)
        except sliced.Unexpected:
            return self.payload()

    async def _quota(self, units: int) -> None:
        """Refuse a job past the caller's quotas (ServerSettings; 0: none): units per job (403:
        a smaller job would do), and unfinished jobs and units in all (429: they free up)."""
        settings, owner = self.master.settings, self.caller.name
        if settings.max_units_per_job and units > settings.max_units_per_job:
            raise Forbidden(
                f"a job of {units} units is more than the {settings.max_units_per_job} units a job may have here; "
                "use larger chunks (chunking.size) or fewer sweep points, or split it into several jobs"
            )
        if not (settings.max_running_jobs or settings.max_open_units):
            return
        store = self.master.store
        finished = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
        open_jobs = [job for job in await store.list_jobs(MAX_OWNER_JOBS, owner) if job.state not in finished]
        if settings.max_running_jobs and len(open_jobs) >= settings.max_running_jobs:
            raise TooManyRequests(
                f"you have {len(open_jobs)} unfinished jobs, the most one scientist may have here "
                f"({settings.max_running_jobs}); wait for some to finish, or cancel some (dockercomp jobs cancel ID)",
                QUOTA_RETRY,
            )
        if settings.max_open_units:
            counts = [await store.unit_counts(job.id) for job in open_jobs]
            held = sum(c.get(state, 0) for c in counts for state in OPEN_UNITS)
            if held + units > settings.max_open_units:
                raise TooManyRequests(
                    f"this job's {units} units and your {held} unfinished ones are more than the "
                    f"{settings.max_open_units} one scientist may have here; wait for your jobs to finish, "
                    "or cancel some",
                    QUOTA_RETRY,
                )

    async def _pinned(self, spec: JobSpec) -> JobSpec:
        """The job with each image named by its pushed id (a registry's goes by digest, never by
        tag), a sidecar's too, and the architecture its image was built for."""
        if not PINNED_RE.fullmatch(spec.image):
            image = await images.resolve(self.master.store, spec.image)
            arch = await self._arch(image, spec.resources.arch)
            spec = replace(spec, image=image.id, resources=replace(spec.resources, arch=arch))
        containers = []
        for c in spec.containers:
            if not c.main and not PINNED_RE.fullmatch(c.image):
                try:
                    c = replace(c, image=(await images.resolve(self.master.store, c.image)).id)
                except BadRequest as exc:
                    raise BadRequest(f"container {c.name}: {exc}") from None
            containers.append(c)
        return replace(spec, containers=tuple(containers))

    async def _arch(self, image: Image, asked: str) -> str:
        """The architecture of a pushed image (its config's), which the job may only repeat."""
        try:
            config = json.loads(await self.master.blobs.read(image.config, 0, image.config_size))
        except (ValueError, OSError):
            return asked
        built = docker_arch(str(config.get("architecture", ""))) if isinstance(config, dict) else ""
        if asked and built and asked != built:
            raise BadRequest(f"resources.arch is {asked}, but image {image.id[:19]} is built for {built}")
        return asked or built

    async def _chunk_units(self, chunks: object) -> Iterable[list[InputFile]]:
        """Each chunk's unit inputs, once every chunk is known to be uploaded (checked a slice
        at a time, the loop free between slices); made as the store writes them."""
        if not isinstance(chunks, tuple) or not chunks:  # the list of the body, as a tuple (post)
            raise BadRequest("chunks must be a non-empty list of uploaded chunk hashes; is the input empty?")
        if len(chunks) > MAX_UNITS:
            raise BadRequest(f"at most {MAX_UNITS} chunks per job; use a larger chunking.size")
        sizes = array.array("q")
        missing = 0
        first_missing = ""
        blobs, pace = self.master.blobs, self.pace
        for i, chunk in enumerate(chunks):
            size = await blobs.size(check_hash(chunk, f"chunks[{i}]"))
            if size is None:
                missing, first_missing = missing + 1, first_missing or chunk
            sizes.append(size or 0)
            if i % ITEMS == 0:
                await pace()
        if missing:
            raise BadRequest(
                f"{missing} chunk(s) not uploaded, e.g. {first_missing}; PUT each to /api/v1/blobs/HASH first"
            )
        return (map_inputs([(chunk, size)]) for chunk, size in zip(chunks, sizes, strict=True))


class JobHandler(JobsBase):
    async def get(self, job_id: str) -> None:
        await self.job(job_id)
        self.reply(await self.status(job_id))

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job with its units per state and its DRMAA2 state, and, while its units wait for
        clients none of which could run them, why (matching.shortfall)."""
        store = self.master.store
        job, counts = await store.get_job(job_id), await store.unit_counts(job_id)
        why = None
        if job.state == JobState.RUNNING and counts[UnitState.READY]:
            why = shortfall(job.spec, await self.master.online_clients())
        return job.to_json() | {
            "job": job.id, "units": counts, "drmaa2": drmaa2_state(job.state, counts).value,
            "unrunnable": why.to_json() if why else None,
        }  # fmt: skip


class JobControlHandler(JobHandler):
    """``POST /api/v1/jobs/ID/VERB``: suspend, resume, hold, release or cancel a job (its
    owner or the operator); the job's status after it, or 409 saying the job's state."""

    session_writes = True  # the dashboard's buttons: its cookie with X-Dockercomp-Session (BaseHandler._token)

    async def post(self, job_id: str, verb: str) -> None:
        await self.job(job_id)
        await self.master.store.control_job(job_id, Verb(verb), self.master.now())
        self.reply(await self.status(job_id))


class UnitsHandler(JobsBase):
    async def get(self, job_id: str) -> None:
        store = self.master.store
        await self.job(job_id)
        offset, limit = self.int_arg("offset", 0, 0, 10**9), self.int_arg("limit", 100, 1, 1000)
        pages: list[list[dict[str, Any]]] = []
        pace = Pacer()
        for low in range(offset, offset + limit, PAGE):  # two queries a page: its units, and their attempts
            page = await store.list_units(job_id, low, min(PAGE, offset + limit - low))
            attempts = await store.list_unit_attempts([u.id for u in page])
            pages.append([_unit_json(u, attempts.get(u.id, [])) for u in page])
            await pace()
            if len(page) < PAGE:
                break
        await reply_list(self, "units", pages, sum(map(len, pages)))


def _unit_json(unit: Unit, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "id": unit.id,
        "index": unit.idx,
        "kind": unit.kind,
        "state": unit.state.value,
        "output": unit.canonical_hash,
        "attempts": [
            {
                "id": a.id, "client": a.client, "state": a.state.value, "leased_at": a.leased_at,
                "finished_at": a.finished_at, "error": a.error, "exit_code": a.exit_code,
                "output": a.output_hash, "validity": a.validity.value if a.validity else None,
                "runtime": a.runtime, "peak_memory": a.peak_memory, "stderr_tail": a.stderr_tail,
            }
            for a in attempts
        ],
    }  # fmt: skip


class ResultsDownloadHandler(JobsBase):
    """The job's result: the reduce output when it has a reduce step, else every canonical
    map output concatenated in unit order. ``?partial=1`` gives what is done so far. Sent as
    it is read: a page of units a query, each page's outputs flushed before the next is read."""

    async def get(self, job_id: str) -> None:
        store = self.master.store
        job = await self.job(job_id)
        partial = self.get_query_argument("partial", "0") in ("1", "true", "yes")
        if job.state != JobState.DONE and not partial:
            counts = await store.unit_counts(job_id)
            raise Conflict(
                f"job {job_id} is {job.state} ({counts['done']} units done, {counts['failed']} failed); "
                "wait for it, or ask for ?partial=1"
            )
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{job_id}.out"')
        pace, unflushed = Pacer(), 0
        async for page in self._outputs(job):
            for unit in page:
                if unit.canonical_hash is None:
                    continue
                for offset in range(0, max(unit.canonical_size or 0, 1), SLICE):
                    data = await self.master.blobs.read(unit.canonical_hash, offset, offset + SLICE)
                    self.write(data)
                    unflushed += len(data)
                    if unflushed >= SLICE:  # what is written waits in memory until flushed
                        await self.flush()
                        unflushed = 0
                    await pace()
            await self.flush()
            await pace()
            unflushed = 0
        self.finish()

    async def _outputs(self, job: Job) -> AsyncIterator[list[Output]]:
        """The units whose outputs make the result (lifecycle.result_units), a page at a time:
        the reduce unit alone once it has its output, else every map unit in order."""
        store = self.master.store
        reduced = result_units(await store.list_outputs(job.id, job.n_map, 1))
        if reduced:
            yield reduced
            return
        for offset in range(0, job.n_map, RESULTS_PAGE):
            yield result_units(await store.list_outputs(job.id, offset, RESULTS_PAGE))


class ClientsHandler(BaseHandler):
    async def get(self) -> None:
        clients = await self.master.store.list_clients()
        online_after, policy = self.master.now() - self.master.settings.online_window, self.master.settings.lease_policy
        self.reply({"clients": [c.to_json(online_after, policy) for c in clients]})


class ChunkHandler(BaseHandler):
    """Chunk a raw upload on the master: ``POST /api/v1/chunks?by=lines&size=1MiB`` with the
    file as body stores every chunk and answers their hashes, ready for a job's "chunks".

    The body is spooled to a file as it arrives (blobs.Upload), never held in memory; a worker
    thread cuts it into chunks a batch at a time, and each batch is stored in one go, the
    event loop free meanwhile. The reply is sent a page at a time."""

    spool: Upload | None = None

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method == "POST":
            self._prepared = False  # refused before its body was read: the reply closes the connection
            await self.check_room(int(self.request.headers.get("Content-Length") or 0))  # checked by prepare
            self._prepared = True
            self.spool = Upload(os.path.join(self.master.settings.data_path, "uploads"))

    def data_received(self, chunk: bytes) -> None:
        if self.spool is None:
            super().data_received(chunk)
        else:
            self.spool.write(chunk)

    def on_finish(self) -> None:
        if self.spool is not None:
            self.spool.discard()

    def on_connection_close(self) -> None:
        if self.spool is not None:
            self.spool.discard()

    async def post(self) -> None:
        args = {k: self.get_query_argument(k) for k in ("by", "size", "separator") if self.get_query_argument(k, None)}
        if "size" in args and args["size"].isascii() and args["size"].isdigit():
            args["size"] = parse_int(args["size"], "size", 0, INT64_MAX)  # type: ignore[assignment]
        try:
            chunking = parse_jobfile({"name": "chunking", "image": "none", "chunking": args}).chunking
        except ProtocolError as exc:
            raise BadRequest(str(exc)) from None
        if chunking.by == "files":
            raise BadRequest("chunking by files happens on the scientist's side; upload each file's chunk")
        assert self.spool is not None
        loop, pace = asyncio.get_running_loop(), Pacer()
        hashes: list[tuple[str, ...]] = []  # a tuple a batch: nothing for the garbage collector to walk
        sizes: list[array.array[int]] = []
        with self.spool.open() as body:
            pieces = chunk_stream(body, chunking)
            while batch := await loop.run_in_executor(None, _take, pieces):
                stored = await self.master.blobs.put_many(batch)
                await self.count_uploads(list(zip(stored, map(len, batch), strict=True)))
                hashes.append(tuple(stored))
                sizes.append(array.array("q", map(len, batch)))
                await pace()
        if not hashes:
            raise BadRequest("the upload is empty; there is nothing to chunk")
        batches = zip(hashes, sizes, strict=True)
        pages = ([{"hash": h, "size": n} for h, n in zip(*batch, strict=True)] for batch in batches)
        await reply_list(self, "chunks", pages, sum(map(len, hashes)), 201)


def _take(pieces: Iterator[bytes]) -> list[bytes]:
    """The next batch of an upload's chunks: BLOB_BATCH of them, or CHUNK_BYTES (one at least)."""
    batch, size = [], 0
    for data in pieces:
        batch.append(data)
        size += len(data)
        if len(batch) >= BLOB_BATCH or size >= CHUNK_BYTES:
            break
    return batch


async def reply_list(handler: BaseHandler, key: str, pages: Iterable[list[Any]], count: int, status: int = 200) -> None:
    """Reply ``{key: ITEMS}``, ITEMS the ``count`` items of ``pages``, with the bytes
    BaseHandler.reply would send, each page made, encoded and written (and flushed) in turn: a
    million items are tens of megabytes, too many to make or encode in one go."""
    pace, first = Pacer(), True
    as_msgpack = handler.wants_msgpack()
    handler.set_status(status)
    handler.set_header("Content-Type", codec.MSGPACK if as_msgpack else codec.JSON)
    if as_msgpack:
        packer = msgpack.Packer(use_bin_type=True)
        handler.write(packer.pack_map_header(1) + packer.pack(key) + packer.pack_array_header(count))
    else:
        handler.write(b"{" + codec.dump_json(key) + b":[")
    for page in pages:
        if not page:
            continue
        if as_msgpack:
            handler.write(b"".join(packer.pack(item) for item in page))
        else:
            handler.write((b"" if first else b",") + codec.dump_json(page)[1:-1])
        first = False
        await handler.flush()
        await pace()
    if not as_msgpack:
        handler.write(b"]}")
    handler.finish()


# -- a big body, decoded a slice at a time -------------------------------------------------------


async def decode_sliced(pieces: list[bytes], ctype: str, pace: Pacer | None = None) -> dict[str, Any]:
    """protocol.sliced.decode, the event loop free between its steps."""
    pace = pace or Pacer()
    steps = sliced.decode(pieces, ctype)
    try:
        while True:
            next(steps)
            await pace()
    except StopIteration as done:
        return cast(dict[str, Any], done.value)
