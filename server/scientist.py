"""The scientist's API under /api/v1/ (JSON, or msgpack when asked): create jobs, chunk and
upload input, follow progress, download results, list jobs and clients."""

import io
import json
from dataclasses import replace
from typing import Any

from dockercomp.protocol.chunking import chunk_stream
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.images import PINNED_RE
from dockercomp.protocol.integrity import check_hash
from dockercomp.protocol.jobfile import JobSpec, Sweep, docker_arch, params_json, parse_jobfile
from dockercomp.protocol.limits import INT64_MAX

from . import images
from .auth import Role
from .errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests
from .handlers import BaseHandler, parse_int
from .lifecycle import JobState, UnitState, Verb, drmaa2_state, result_units
from .matching import shortfall
from .models import Image, InputFile, Job
from .store.base import map_inputs, sweep_inputs

MAX_UNITS = 1_000_000
MAX_OWNER_JOBS = 100_000  # a scientist's jobs looked at for the quotas
OPEN_UNITS = ("ready", "running", "suspended")  # the unit states that count against a quota
QUOTA_RETRY = 60  # seconds a refused scientist is told to wait
SLICE = 1 << 20


class JobsBase(BaseHandler):
    async def job(self, job_id: str) -> Job:
        """The job, if the caller may see it; another scientist's job is as good as unknown."""
        job = await self.master.store.get_job(job_id)
        if not self.caller.owns(job.owner):
            raise NotFound(f"no job {job_id!r:.40}")
        return job


class JobsHandler(JobsBase):
    async def get(self) -> None:
        limit = self.int_arg("limit", 100, 1, 10_000)
        owner = None if self.caller.role == Role.OPERATOR else self.caller.name
        jobs = await self.master.store.list_jobs(limit, owner)
        self.reply({"jobs": [job.to_json() for job in jobs]})

    async def post(self) -> None:
        """Create a job from ``{"job": JOBFILE, "chunks": [HASH, ...], "hold": false}``; every
        chunk must have been uploaded first. A sweep job gives no chunks: the master stores each
        unit's params.json itself. All units are created at once, or nothing is. A held job
        starts no unit until it is released."""
        payload = self.payload()
        if not isinstance(payload, dict) or set(payload) - {"job", "chunks", "hold"}:
            raise BadRequest('body must be {"job": {...job file...}, "chunks": ["<hash>", ...], "hold": false}')
        hold = payload.get("hold", False)
        if not isinstance(hold, bool):
            raise BadRequest("hold must be true or false")
        spec = await self._pinned(parse_jobfile(payload.get("job")))
        chunks = payload.get("chunks")
        if self.caller.role != Role.OPERATOR:  # the scientist's quotas (the operator has none)
            count = len(spec.sweep) if spec.sweep is not None else len(chunks) if isinstance(chunks, list) else 0
            await self._quota(count)
        if spec.sweep is not None:
            if chunks:
                raise BadRequest("a sweep job takes no chunks: each unit's input is its params.json")
            units = await self._sweep_units(spec.sweep)
        else:
            units = await self._chunk_units(chunks)
        job = await self.master.store.create_job(spec, units, self.master.now(), self.caller.name, held=hold)
        self.reply({"job": job.id, "image": spec.image}, status=201)

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

    async def _chunk_units(self, chunks: object) -> list[list[InputFile]]:
        if not isinstance(chunks, list) or not chunks:
            raise BadRequest("chunks must be a non-empty list of uploaded chunk hashes; is the input empty?")
        if len(chunks) > MAX_UNITS:
            raise BadRequest(f"at most {MAX_UNITS} chunks per job; use a larger chunking.size")
        sizes = []
        missing = []
        for i, chunk in enumerate(chunks):
            size = await self.master.blobs.size(check_hash(chunk, f"chunks[{i}]"))
            if size is None:
                missing.append(chunk)
            sizes.append((chunk, size or 0))
        if missing:
            raise BadRequest(
                f"{len(missing)} chunk(s) not uploaded, e.g. {missing[0]}; PUT each to /api/v1/blobs/HASH first"
            )
        return [map_inputs([s]) for s in sizes]

    async def _sweep_units(self, sweep: Sweep) -> list[list[InputFile]]:
        """One unit per parameter set; its params.json is stored like any blob (content
        addressed, so units with the same parameters share it)."""
        blobs = [params_json(sweep.params(i)) for i in range(len(sweep))]
        hashes = await self.master.blobs.put_many(blobs)
        return sweep_inputs([(h, len(b)) for h, b in zip(hashes, blobs, strict=True)])


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
        units = await store.list_units(job_id, self.int_arg("offset", 0, 0, 10**9), self.int_arg("limit", 100, 1, 1000))
        self.reply({"units": [await self._unit_json(u) for u in units]})

    async def _unit_json(self, unit: Any) -> dict[str, Any]:
        attempts = await self.master.store.list_attempts(unit.id)
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
    map output concatenated in unit order. ``?partial=1`` gives what is done so far."""

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
        units = await store.list_units(job_id, 0, job.n_map + 1)
        outputs = result_units(units)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{job_id}.out"')
        for unit in outputs:
            if unit.canonical_hash is None:
                continue
            size = unit.canonical_size or 0
            for offset in range(0, max(size, 1), SLICE):
                self.write(await self.master.blobs.read(unit.canonical_hash, offset, offset + SLICE))
                await self.flush()
        self.finish()


class ClientsHandler(BaseHandler):
    async def get(self) -> None:
        clients = await self.master.store.list_clients()
        online_after, policy = self.master.now() - self.master.settings.online_window, self.master.settings.lease_policy
        self.reply({"clients": [c.to_json(online_after, policy) for c in clients]})


class ChunkHandler(BaseHandler):
    """Chunk a raw upload on the master: ``POST /api/v1/chunks?by=lines&size=1MiB`` with the
    file as body stores every chunk and answers their hashes, ready for a job's "chunks"."""

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
        chunks = []
        for data in chunk_stream(io.BytesIO(self.body), chunking):
            chunks.append({"hash": await self.master.blobs.put(data), "size": len(data)})
        if not chunks:
            raise BadRequest("the upload is empty; there is nothing to chunk")
        self.reply({"chunks": chunks}, status=201)
