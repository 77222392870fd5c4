"""What the master keeps: Job (the definition), Unit (one chunk of it), Attempt (one lease of a
unit to one client, with its outcome) and Client (a volunteer's daemon). Plain records; the
rules that move them live in lifecycle.py."""

from dataclasses import dataclass, field
from typing import Any

from dockercomp.protocol.jobfile import JobSpec
from dockercomp.protocol.messages import HostFacts, UnitKind
from dockercomp.protocol.signing import Signed

from .auth import is_stranger
from .lifecycle import AttemptState, JobState, LeasePolicy, Record, UnitState, Validity, reliability


@dataclass(frozen=True)
class InputFile:
    """One input of a unit, found at /input/<name> inside the container."""

    name: str
    hash: str
    size: int


@dataclass
class Job:
    id: str
    spec: JobSpec
    state: JobState
    created_at: float
    finished_at: float | None = None
    owner: str = ""  # the name of the key that submitted it
    n_map: int = 0  # map units (the reduce unit, if any, comes after them)
    done_map: int = 0
    failed_map: int = 0
    suspended_at: float | None = None  # while suspended: since when

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.spec.name,
            "image": self.spec.image,
            "owner": self.owner,
            "state": self.state.value,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "suspended_at": self.suspended_at,
            "units": self.n_map,
            "reduce": self.spec.reduce_command is not None,
            "priority": self.spec.priority,
        }


@dataclass
class Unit:
    id: str
    job: str
    idx: int
    kind: UnitKind
    state: UnitState
    wanted: int
    inputs: list[InputFile]
    canonical_hash: str | None = None
    canonical_size: int | None = None

    def __post_init__(self) -> None:
        self.kind = UnitKind(self.kind)  # a store's row holds the plain string


@dataclass
class Attempt:
    id: str
    unit: str
    job: str
    client: str
    state: AttemptState
    leased_at: float
    deadline: float
    finished_at: float | None = None
    output_hash: str | None = None
    output_size: int | None = None
    exit_code: int | None = None
    error: str | None = None
    stderr_tail: str = ""
    runtime: float | None = None
    peak_memory: int | None = None
    validity: Validity | None = None


@dataclass
class Client:
    id: str
    name: str
    registered_at: float
    last_seen: float
    account: str = ""  # the volunteer account it enrolled under
    slots: int = 1
    busy: int = 0
    host: HostFacts = field(default_factory=HostFacts)
    containers: list[dict[str, Any]] = field(default_factory=list)
    valid: int = 0  # results that agreed with the quorum
    invalid: int = 0  # results that disagreed with it
    errors: int = 0  # attempts that errored or timed out
    streak: int = 0  # valid results since its last invalid one
    contradicted: int = 0  # its failures on units that others then computed
    # what it donates, as its last heartbeat said (0: not said)
    memory: int = 0
    gpus: int = 0
    disk: int = 0

    @property
    def reliability(self) -> float:
        return reliability(self.valid, self.invalid)

    @property
    def record(self) -> Record:
        return Record(self.valid, self.invalid, self.streak, self.contradicted)

    def to_json(self, online_after: float, policy: LeasePolicy | None = None) -> dict[str, Any]:
        """With the lease policy: whether it may decide units alone (``trusted``), and why it is
        quarantined, when it is ("" when it leases)."""
        policy = policy or LeasePolicy()
        return {
            "id": self.id,
            "name": self.name,
            "account": self.account,
            "online": self.last_seen >= online_after,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "slots": self.slots,
            "busy": self.busy,
            "memory": self.memory,
            "gpus": self.gpus,
            "disk": self.disk,
            "host": self.host.to_wire(),
            "containers": self.containers,
            "valid": self.valid,
            "invalid": self.invalid,
            "errors": self.errors,
            "streak": self.streak,
            "contradicted": self.contradicted,
            "reliability": round(self.reliability, 4),
            "trusted": policy.trusted(self.record, is_stranger(self.account)),
            "quarantined": policy.quarantined(self.record),
        }


@dataclass(frozen=True)
class Layer:
    """One layer of a pushed image, named by Docker's own digest (the sha256 of the
    uncompressed layer tar, the config's ``rootfs.diff_ids`` entry). Its bytes are kept as
    consecutive pieces, each an ordinary content-addressed blob, so every transfer of a
    layer is resumable piece by piece and every piece is verified on its own."""

    digest: str
    size: int
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class Image:
    """A workload image pushed to the master: Docker's image id (the sha256 of its config),
    the config as a blob, its layers in order, the tags it was pushed under, signatures."""

    id: str
    config: str  # xxh3-128 hash of the config blob
    config_size: int
    layers: tuple[str, ...]  # layer digests, bottom first
    owner: str
    pushed_at: float
    tags: tuple[str, ...] = ()
    signatures: tuple[Signed, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "config": self.config, "config_size": self.config_size, "layers": list(self.layers),
            "owner": self.owner, "pushed_at": self.pushed_at, "tags": list(self.tags),
            "signatures": [{"key": s.key, "public_key": s.public_key, "signature": s.signature}
                           for s in self.signatures],
        }  # fmt: skip


@dataclass(frozen=True)
class Tally:
    """One activity counter of one minute: attempts completed, errors, invalid results and
    integrity failures per job (counted from lifecycle events in the write that made them),
    and, as ``clients`` with no job, the clients that finished an attempt in that minute."""

    minute: int
    job: str
    counter: str
    n: int
