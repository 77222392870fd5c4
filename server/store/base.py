"""The Store interface: the operations the lifecycle needs, not a generic document API.

Every backend passes tests/server/test_store_contract.py. Backends never decide a state
themselves: they load a unit with its attempts, call lifecycle.decide(), and write the result
as a compare-and-set, so two masters sharing one store never hand out the same attempt.
"""

import secrets
from abc import ABC, abstractmethod

from dockercomp.protocol.jobfile import JobSpec, params_env
from dockercomp.protocol.messages import (
    API,
    Ack,
    Grant,
    Heartbeat,
    HostFacts,
    InputRef,
    LeaseRequest,
    ResultReport,
)

from ..lifecycle import LeasePolicy, UnitState
from ..models import Attempt, Client, InputFile, Job, Unit


def new_id(nbytes: int = 6) -> str:
    return secrets.token_hex(nbytes)


class Store(ABC):
    """Jobs, units, attempts and clients, shared by every master process."""

    # -- life -------------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing (tables, indexes). Idempotent."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def secret(self) -> bytes:
        """A random key created once per store and shared by all masters (signs client tokens)."""

    # -- jobs ---------------------------------------------------------------------------
    @abstractmethod
    async def create_job(self, spec: JobSpec, units: list[list[InputFile]], now: float) -> Job:
        """Create a job with one map unit per entry of ``units``, all or nothing."""

    @abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """The job, or NotFound."""

    @abstractmethod
    async def list_jobs(self, limit: int = 100) -> list[Job]:
        """Newest first."""

    @abstractmethod
    async def unit_counts(self, job_id: str) -> dict[str, int]:
        """Units of a job per state (every UnitState present, zeros included)."""

    @abstractmethod
    async def list_units(self, job_id: str, offset: int = 0, limit: int = 100) -> list[Unit]:
        """Units of a job in order (the reduce unit last)."""

    @abstractmethod
    async def list_attempts(self, unit_id: str) -> list[Attempt]:
        """Attempts of one unit, oldest first."""

    @abstractmethod
    async def finished_since(self, since: float) -> list[Attempt]:
        """Attempts that ended (any outcome) at or after ``since``, oldest first: the
        dashboard's throughput and activity over the last hour."""

    # -- clients -------------------------------------------------------------------------
    @abstractmethod
    async def register_client(self, name: str, slots: int, host: HostFacts, now: float) -> Client: ...

    @abstractmethod
    async def get_client(self, client_id: str) -> Client:
        """The client, or NotFound."""

    @abstractmethod
    async def list_clients(self) -> list[Client]: ...

    @abstractmethod
    async def heartbeat(self, client_id: str, beat: Heartbeat, now: float) -> list[str]:
        """Record a heartbeat; return the attempts the client runs but should abort (released,
        unknown, foreign, or their unit already decided)."""

    # -- attempts ------------------------------------------------------------------------
    @abstractmethod
    async def lease(self, client_id: str, request: LeaseRequest, now: float, policy: LeasePolicy) -> list[Grant]:
        """Atomically issue up to ``request.max_units`` attempts to this client: units in order
        of priority, job age and index, only what fits the client's free cpus and memory, and
        a unit this client had before only when lifecycle.may_lease_again allows it."""

    @abstractmethod
    async def record_results(self, client_id: str, reports: list[ResultReport], now: float) -> list[Ack]:
        """Apply results (outputs already in the blob store); one Ack per report, in order."""

    @abstractmethod
    async def release(self, client_id: str, attempt_ids: list[str], now: float) -> list[Ack]:
        """Give leases back unfinished; the units are issued again, to any client."""

    @abstractmethod
    async def expire(self, now: float, policy: LeasePolicy) -> int:
        """Turn leases past their deadline, or of clients silent past the heartbeat timeout,
        into timed_out attempts and reissue their units. Return how many expired."""


# -- helpers shared by backends ------------------------------------------------------------


def grant(job_id: str, spec: JobSpec, unit: Unit, attempt_id: str, deadline: float) -> Grant:
    """The lease message for one attempt of ``unit``. A sweep's map unit also gets its
    parameters as environment variables (over the job's env of the same name): they follow
    from the job's sweep and the unit's index, so stores keep nothing more per unit."""
    command = spec.reduce_command if unit.kind == "reduce" else spec.command
    env = dict(spec.env)
    if spec.sweep is not None and unit.kind == "map":
        env.update(params_env(spec.sweep.params(unit.idx)))
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
        timeout=spec.resources.timeout,
        deadline=deadline,
        inputs=[InputRef(f.name, f.hash, f.size, f"{API}/blobs/{f.hash}") for f in unit.inputs],
        mode=spec.mode,
    )


def reduce_inputs(map_units: list[Unit]) -> list[InputFile]:
    """The reduce unit's inputs: every canonical map output as 000000, 000001, ... in order."""
    return [InputFile(f"{u.idx:06d}", u.canonical_hash or "", u.canonical_size or 0) for u in map_units]


def fits(spec: JobSpec, cpus: float, memory: int) -> bool:
    """Whether one unit of this job fits in what the client has free."""
    return spec.resources.cpus <= cpus + 1e-9 and spec.resources.memory <= memory


def map_inputs(hashes: list[tuple[str, int]]) -> list[InputFile]:
    return [InputFile("chunk", h, size) for h, size in hashes]


def sweep_inputs(hashes: list[tuple[str, int]]) -> list[list[InputFile]]:
    """A sweep's units: each has one input, its parameters as params.json."""
    return [[InputFile("params.json", h, size)] for h, size in hashes]


ZERO_COUNTS = {s.value: 0 for s in UnitState}
