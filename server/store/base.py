"""The Store interface: the operations the lifecycle needs, not a generic document API.

Every backend passes tests/server/test_store_contract.py. Backends never decide a state
themselves: they load a unit with its attempts, hand it to a lifecycle function (on_lease, on_result,
on_release, on_expire) and write the change it returns
as a compare-and-set, so two masters sharing one store never hand out the same attempt.
"""

import asyncio
import random
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import replace
from typing import Any, NamedTuple

from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import PARAMS_FILE, JobSpec, params_env, params_json
from dockercomp.protocol.messages import (
    API,
    Ack,
    Action,
    ContainerSpec,
    Grant,
    Heartbeat,
    HostFacts,
    InputRef,
    LeaseRequest,
    ResultReport,
    UnitKind,
)
from dockercomp.protocol.signing import Signed

from ..auth import Key, Role, is_stranger
from ..events import Bus
from ..lifecycle import JobCounts, LeasePolicy, UnitState, Verb
from ..models import Attempt, Client, Image, InputFile, Job, Layer, Tally, Unit
from ..scheduler import Fifo, Scheduler, Share


def new_id(nbytes: int = 6) -> str:
    return secrets.token_hex(nbytes)


REVALIDATE_SLICE = 100  # units one revalidate call decides again: one short write, the loop free between calls
# a uniform draw in [0, 1) that no client can foresee: which of a trusted client's units are spot-checked
draw = random.SystemRandom().random


UNIT_SLICE = 500  # units create_job writes in one transaction (or one insert_many)


class Store(ABC):
    """Jobs, units, attempts and clients, shared by every master process. ``events`` has the
    lifecycle's events of every change this process writes, once it is written."""

    unit_slice = UNIT_SLICE

    def __init__(self) -> None:
        self.events = Bus()
        self.scheduler: Scheduler = Fifo()  # which job a lease serves next; the master sets its own
        self.policy = LeasePolicy()  # trust and quarantine (results, revalidate); the master sets its own

    # -- life -------------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing (tables, indexes). Idempotent."""

    @abstractmethod
    async def close(self) -> None: ...

    # -- keys ---------------------------------------------------------------------------
    @abstractmethod
    async def add_key(self, key: Key) -> None:
        """Store a new key; Conflict when its name is taken (revoked names stay taken)."""

    @abstractmethod
    async def find_key(self, token_hash: str) -> Key | None:
        """The key whose token hashes so, revoked or not."""

    @abstractmethod
    async def list_keys(self) -> list[Key]:
        """Every key, oldest first."""

    @abstractmethod
    async def revoke_key(self, name: str, now: float) -> int:
        """Revoke the key of this name and, when it is a volunteer account, every machine
        enrolled under it. Return how many keys were revoked (0: none by that name, or
        revoked already)."""

    # -- images -------------------------------------------------------------------------
    @abstractmethod
    async def add_layer(self, layer: Layer) -> None:
        """Record a layer whose pieces are in the blob store; adding it again changes nothing."""

    @abstractmethod
    async def get_layer(self, digest: str) -> Layer | None: ...

    @abstractmethod
    async def add_image(self, image: Image) -> Image:
        """Record a pushed image (its layers added before). Pushing an image id again adds
        its tags; a tag names the image pushed with it last. Returns the image as stored."""

    @abstractmethod
    async def get_image(self, ref: str) -> Image | None:
        """The image with this id (``sha256:...``), or the one a tag names last."""

    @abstractmethod
    async def list_images(self, owner: str | None = None) -> list[Image]:
        """Images newest first, of one owner or all."""

    @abstractmethod
    async def add_signature(self, image_id: str, signature: Signed) -> Image:
        """Add a signature to an image (one per key: a new one replaces that key's); NotFound
        for an unknown image."""

    # -- uploads: the bytes each owner stored (per-scientist quotas) -------------------------
    @abstractmethod
    async def uploaded(self, owner: str) -> int:
        """The bytes of the distinct blobs ``owner`` has put on the master."""

    @abstractmethod
    async def add_uploads(self, owner: str, blobs: list[tuple[str, int]], now: float, quota: int = 0) -> None:
        """Count blobs (hash, size) ``owner`` put (each once: a blob it has already costs
        nothing); TooLarge, saying what to do, when they would take the owner past ``quota``
        bytes (0: none), and then none of them is counted."""

    # -- jobs ---------------------------------------------------------------------------
    @abstractmethod
    async def create_job(
        self, spec: JobSpec, units: "UnitInputs", now: float, owner: str = "", held: bool = False
    ) -> Job:
        """Create a job with one map unit per entry of ``units`` (read as they are written, so
        a million of them need not be in memory at once), all or nothing; a ``held`` job starts
        no unit until released (control_job). The units are written in slices of
        ``unit_slice``, the event loop free between them (Pacer), and the job itself last: no
        read or lease finds a unit whose job is not there, so a half-made job is never seen,
        and a failure (``units`` may raise too) removes what was written."""

    @abstractmethod
    async def control_job(self, job_id: str, verb: Verb, now: float) -> Job:
        """Apply a verb to a job (lifecycle.on_job_control), then to each of its open units
        (lifecycle.on_control); the job as it is now. NotFound, or Conflict with the job's
        state when the verb does not apply. Repeating a verb that applied is harmless."""

    @abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """The job, or NotFound."""

    @abstractmethod
    async def list_jobs(self, limit: int = 100, owner: str | None = None) -> list[Job]:
        """Newest first; only the jobs of ``owner`` when given."""

    @abstractmethod
    async def unit_counts(self, job_id: str) -> dict[str, int]:
        """Units of a job per state (every UnitState present, zeros included)."""

    @abstractmethod
    async def list_units(self, job_id: str, offset: int = 0, limit: int = 100) -> list[Unit]:
        """Units of a job in order (the reduce unit last), from the one at index ``offset``: a
        job's units are numbered without gaps, so that is also its place, and a page deep into a
        big job is read from the index, not counted off from the first unit."""

    @abstractmethod
    async def list_unit_attempts(self, unit_ids: list[str]) -> dict[str, list[Attempt]]:
        """The attempts of several units (a page of list_units), oldest first, in one query;
        a unit with none is left out."""

    @abstractmethod
    async def list_outputs(self, job_id: str, offset: int = 0, limit: int = 100) -> list["Output"]:
        """What list_units gives, but only what a job's results are made of: each unit's index,
        kind and canonical output (a page of a million-unit download reads nothing more)."""

    @abstractmethod
    async def list_attempts(self, unit_id: str) -> list[Attempt]:
        """Attempts of one unit, oldest first."""

    @abstractmethod
    async def activity(self, since: float) -> list[Tally]:
        """The activity counters of every minute from ``since`` on (see events.tally)."""

    # -- clients -------------------------------------------------------------------------
    @abstractmethod
    async def register_client(
        self, name: str, slots: int, host: HostFacts, now: float, account: str, token_hash: str
    ) -> Client:
        """Register a machine under a volunteer account, with the client key whose token
        hashes to ``token_hash`` (named by the client's id), in one write."""

    @abstractmethod
    async def get_client(self, client_id: str) -> Client:
        """The client, or NotFound."""

    @abstractmethod
    async def list_clients(self) -> list[Client]: ...

    @abstractmethod
    async def heartbeat(self, client_id: str, beat: Heartbeat, now: float) -> list[tuple[Action, str]]:
        """Record a heartbeat; return the master's orders for the attempts the client runs
        (lifecycle.commands: abort, pause, resume)."""

    # -- attempts ------------------------------------------------------------------------
    @abstractmethod
    async def lease(
        self, client_id: str, request: LeaseRequest, now: float, policy: LeasePolicy, network: str = ""
    ) -> list[Grant]:
        """Atomically issue up to ``request.max_units`` attempts to this client, leasing from
        ``network`` (lifecycle.Holder): units of the running jobs in the order ``self.scheduler``
        picks them (each job's in index order), within its per-owner cap, only what fits the
        client's free room (matching.Room), never to a holder that shares a client, an account or
        a network with one that has the unit (unless lifecycle.may_lease_again allows it), and
        never more than the policy's room for the client's slots; nothing to a quarantined one."""

    @abstractmethod
    async def shares(self) -> dict[str, Share]:
        """Each owner's use of the pool, as last written."""

    @abstractmethod
    async def record_results(self, client_id: str, reports: list[ResultReport], now: float) -> list[Ack]:
        """Apply results (outputs already in the blob store); one Ack per report, in order."""

    @abstractmethod
    async def release(self, client_id: str, attempt_ids: list[str], now: float) -> list[Ack]:
        """Give leases back unfinished; the units are issued again, to any client."""

    @abstractmethod
    async def revalidate(self, now: float, limit: int = REVALIDATE_SLICE) -> int:
        """Strike the votes of clients found out (``self.policy.found_out``) and decide again the
        units they voted on, by the others (lifecycle.on_found_out): a done unit that loses its
        quorum is reopened, and so is its job. At most ``limit`` units a call; return how many."""

    @abstractmethod
    async def expire(self, now: float, policy: LeasePolicy) -> int:
        """Turn leases past their deadline, or of clients silent past the heartbeat timeout,
        into timed_out attempts and reissue their units. Return how many expired."""


# -- helpers shared by backends ------------------------------------------------------------


def grant(job_id: str, spec: JobSpec, unit: Unit, attempt_id: str, deadline: float) -> Grant:
    """The lease message for one attempt of ``unit``. A sweep's map unit gets its parameters
    as environment variables (over the job's env of the same name) and as /input/params.json,
    sent in the grant: both follow from the job's sweep and the unit's index, so stores keep
    nothing per unit for them, and a million-point sweep writes no blob. A job of
    several containers sends its sidecars with every unit (the reduce unit's too); the
    parameters go to the main container only. A service-mode job's map units run in service
    mode; its reduce unit, a batch command of its own, in batch mode."""
    command = spec.reduce_command if unit.kind == UnitKind.REDUCE else spec.command
    env = dict(spec.env)
    inputs = [InputRef(f.name, f.hash, f.size, f"{API}/blobs/{f.hash}") for f in unit.inputs]
    if spec.sweep is not None and unit.kind == UnitKind.MAP:
        params = spec.sweep.params(unit.idx)
        env.update(params_env(params))
        if not inputs:  # (a sweep made before params.json went in the grant stored it as a blob)
            data = params_json(params)
            inputs = [InputRef(PARAMS_FILE, digest(data), len(data), "", data)]
    return Grant(
        attempt=attempt_id,
        job=job_id,
        unit=unit.id,
        kind=unit.kind,
        image=spec.image,
        command=list(command or ()),
        env=env,
        cpus=spec.resources.cpus,
        memory=spec.resources.memory,
        gpus=spec.resources.gpus,
        timeout=spec.resources.timeout,
        deadline=deadline,
        inputs=inputs,
        mode=spec.mode if unit.kind == UnitKind.MAP else "batch",  # one reduce unit gains nothing from a warm one
        sidecars=[ContainerSpec(c.name, c.image, list(c.command), dict(c.env)) for c in spec.sidecars],
        main_name=spec.main_name,
    )


def reduce_inputs(map_units: list[Unit]) -> list[InputFile]:
    """The reduce unit's inputs: every canonical map output as 000000, 000001, ... in order."""
    return [InputFile(f"{u.idx:06d}", u.canonical_hash or "", u.canonical_size or 0) for u in map_units]


def map_inputs(hashes: list[tuple[str, int]]) -> list[InputFile]:
    return [InputFile("chunk", h, size) for h, size in hashes]


def sweep_inputs(points: int) -> Iterator[list[InputFile]]:
    """A sweep's units: none stores an input (its params.json comes with its grant)."""
    return ([] for _ in range(points))


class Output(NamedTuple):
    """A unit's canonical output, as list_outputs reads it for a job's results."""

    idx: int
    kind: str
    canonical_hash: str | None
    canonical_size: int | None


UnitInputs = Iterable[list[InputFile]] | AsyncIterable[list[InputFile]]
"""What create_job takes: each map unit's inputs, in order, from a list or produced as they are
read (an async source may store each unit's input first, as a sweep's params.json is)."""


async def unit_slices(units: UnitInputs, size: int) -> AsyncIterator[list[list[InputFile]]]:
    """``units`` in lists of ``size`` (the last one shorter)."""
    page: list[list[InputFile]] = []
    if isinstance(units, AsyncIterable):
        async for inputs in units:
            page.append(inputs)
            if len(page) >= size:
                yield page
                page = []
    else:
        for inputs in units:
            page.append(inputs)
            if len(page) >= size:
                yield page
                page = []
    if page:
        yield page


class Pacer:
    """Long work in slices on the event loop: calling it after each slice lets the loop serve
    everything else for a moment whenever BUDGET seconds of work have gone by since the last
    time, so no request waits behind a big one for much longer than that."""

    BUDGET = 0.005
    PAUSE = 0.001  # a real sleep, not sleep(0): a waiting request needs a few loop turns to be answered

    def __init__(self) -> None:
        self._since = time.monotonic()

    async def __call__(self) -> None:
        if time.monotonic() - self._since >= self.BUDGET:
            await self.now()

    async def now(self) -> None:
        """Let the loop run now, before a step that cannot be cut (a big copy, a big free)."""
        await asyncio.sleep(self.PAUSE)
        self._since = time.monotonic()


ZERO_COUNTS = {s.value: 0 for s in UnitState}


def job_counts(job: Job) -> JobCounts:
    """What the lifecycle needs of a job to say its next step."""
    return JobCounts(job.id, job.state, job.n_map, job.done_map, job.failed_map, job.spec.reduce_command is not None)


def running_of(beat: Heartbeat) -> dict[str, bool]:
    """The attempts a heartbeat says run, each with whether one of its containers is paused."""
    running: dict[str, bool] = {}
    for c in beat.containers:
        running[c.attempt] = running.get(c.attempt, False) or c.state == "paused"
    return running


def over_quota(owner: str, used: int, size: int, quota: int) -> str:
    return (f"{owner!r:.40} has stored {used} of the {quota} bytes it may store here; {size} more do not fit: "
            "ask the operator for more room (dockercomp master --max-bytes-per-owner)")  # fmt: skip


def replica_account(account: str) -> str:
    """The account a replica counts for: none for a stranger (lifecycle.Holder)."""
    return "" if is_stranger(account) else account


def client_key(client: Client, token_hash: str) -> Key:
    """The key a newly registered client authenticates with."""
    return Key(client.id, Role.CLIENT, token_hash, client.registered_at, client.account, client.id)


def merge_image(old: Image | None, new: Image) -> Image:
    """An image pushed again keeps its first record and gains the new tags."""
    if old is None:
        return new
    return replace(old, tags=tuple(dict.fromkeys((*old.tags, *new.tags))))


def image_from(doc: dict[str, Any]) -> Image:
    """An image from the plain data of Image.to_json (as backends keep it)."""
    return Image(
        id=doc["id"], config=doc["config"], config_size=doc["config_size"], layers=tuple(doc["layers"]),
        owner=doc["owner"], pushed_at=doc["pushed_at"], tags=tuple(doc["tags"]),
        signatures=tuple(Signed(s["key"], s["public_key"], s["signature"]) for s in doc["signatures"]),
    )  # fmt: skip


def with_signature(image: Image, signature: Signed) -> Image:
    others = tuple(s for s in image.signatures if s.key != signature.key)
    return replace(image, signatures=(*others, signature))
