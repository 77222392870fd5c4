"""The messages between client daemons and the master, as dataclasses.

Every message knows how to turn itself into plain data (``to_wire``) and how to be built
from untrusted plain data (``from_wire``), which checks every field's type against the
annotations and raises ProtocolError naming the field to fix. It bounds them too: every
string's length and every list's or map's entries, by the class's ``caps`` table (``Cap``; a
field it does not name gets ``DEFAULT_CAP``), so no message a peer sends can grow without end.
"""

import base64
import binascii
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self, get_type_hints

from .errors import ProtocolError
from .jobfile import MAX_CONTAINERS
from .limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_ARG,
    MAX_BATCH,
    MAX_IMAGES,
    MAX_INPUTS,
    MAX_ITEMS,
    MAX_LEASE,
    MAX_SLOTS,
    MAX_STR,
    MAX_URL,
    STDERR_TAIL,
)

API = "/api/v1"


class ErrorKind(StrEnum):
    """Why an attempt did not produce a result; each is reported and counted on its own."""

    IMAGE_MISSING = "image_missing"  # the image is not on the client and cannot be built/pulled
    EXIT_NONZERO = "exit_nonzero"  # the container exited with a non-zero code
    OOM = "oom"  # the container was killed for exceeding its memory limit
    TIMEOUT = "timeout"  # the container ran past the job's timeout and was killed
    INTEGRITY = "integrity"  # an input blob did not match its hash, even after a new download
    DOCKER_UNAVAILABLE = "docker_unavailable"  # the client's Docker engine did not answer
    ABORTED = "aborted"  # the client stopped the container (shutdown or an abort command)
    REFUSED = "refused"  # beyond what the volunteer allows (cpus, memory, timeout, images): not run
    UNTRUSTED = "untrusted"  # the image is not signed by a key the volunteer trusts: not run
    NO_RESULT = "no_result"  # the container exited 0 but left no regular file at /output/result
    CLIENT = "client"  # any other failure inside the client daemon


class ResultStatus(StrEnum):
    """How an attempt ended, as its client reports it."""

    SUCCEEDED = "succeeded"  # the container exited 0 and left an output (its hash is in the report)
    ERRORED = "errored"  # it did not: the report says why (its ErrorKind)


class UnitKind(StrEnum):
    """What a unit computes."""

    MAP = "map"  # the job's command over one input chunk (or one point of a sweep)
    REDUCE = "reduce"  # the job's reduce command over every map unit's output, once they are done


@dataclass(frozen=True)
class Cap:
    """The bounds of one field: the characters of each string in it (a map's values; its keys
    have ``keys``), and the entries of each list or map in it. Bytes are bounded by the body."""

    length: int = MAX_STR
    items: int = MAX_ITEMS
    keys: int = MAX_STR


DEFAULT_CAP = Cap()
_Table = tuple[dict[str, Any], dict[str, dataclasses.Field[Any]], dict[str, Cap]]


@functools.cache
def _key_cap(length: int) -> Cap:
    return Cap(length=length)


class Message:
    """Base of all wire messages: typed construction from untrusted data."""

    caps: ClassVar[Mapping[str, Cap]] = {}
    """A field's bounds where DEFAULT_CAP is not enough (or too much)."""
    _tables: ClassVar[dict[type, _Table]] = {}

    @classmethod
    def _table(cls) -> _Table:
        """The class's type hints, fields and caps by name, looked up once: the introspection
        costs more than checking a message."""
        table = Message._tables.get(cls)
        if table is None:
            fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            caps = {name: cls.caps.get(name, DEFAULT_CAP) for name in fields}
            table = Message._tables[cls] = (get_type_hints(cls), fields, caps)
        return table

    @classmethod
    def from_wire(cls, data: object, where: str = "") -> Self:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where or cls.__name__} must be a map, got {_kind(data)}")
        hints, known, caps = cls._table()
        unknown = data.keys() - known.keys()
        if unknown:
            # a name that is not printable is quoted, escapes and all: it could hold a line break for a log
            names = ", ".join(sorted(n if n.isprintable() else repr(n) for n in map(str, unknown)))[:120]
            raise ProtocolError(f"{where or cls.__name__}: unknown field(s) {names}")
        values = {}
        for name, f in known.items():
            path = f"{where}.{name}" if where else name
            if name in data:
                values[name] = _coerce(data[name], hints[name], path, caps[name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"missing field {path}")
        try:
            return cls(**values)
        except ProtocolError as exc:  # a rule across fields (__post_init__): say where, if nested
            if not where:
                raise
            raise ProtocolError(f"{where}: {exc}") from None

    def to_wire(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self._table()[1]}


COMMAND = Cap(length=MAX_ARG, items=MAX_ITEMS)  # a command's arguments, an env's values: what exec takes
MAX_CONTAINERS_LISTED = MAX_SLOTS * MAX_CONTAINERS  # every slot busy with a unit of the most containers


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:  # most values: skip the isinstance checks below
        return value
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _kind(value: object) -> str:
    return type(value).__name__


def _coerce(value: Any, hint: Any, path: str, cap: Cap = DEFAULT_CAP) -> Any:
    # plain types first: they are most fields, and need no typing introspection
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            try:
                return float(value)
            except OverflowError:  # an integer past the largest float
                raise ProtocolError(f"{path} is too large a number") from None
        raise ProtocolError(f"{path} must be a number, got {_kind(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise ProtocolError(f"{path} must be a signed 64-bit integer, got one of {value.bit_length()} bits")
            return value
        raise ProtocolError(f"{path} must be an integer, got {_kind(value)}")
    if hint is str:
        if type(value) is str:
            if len(value) > cap.length:
                raise ProtocolError(f"{path} is {len(value)} characters long; at most {cap.length} are accepted")
            return value
        raise ProtocolError(f"{path} must be str, got {_kind(value)}")
    if hint in (bytes, bool):
        if type(value) is hint:
            return value
        if hint is bytes and type(value) is dict and list(value) == ["base64"]:  # JSON's bytes (codec.dump_json)
            try:
                return base64.b64decode(value["base64"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ProtocolError(f"{path}.base64 must be base64 text") from None
        raise ProtocolError(f"{path} must be {hint.__name__}, got {_kind(value)}")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path, cap)
            except ProtocolError as exc:
                errors.append(str(exc))
        raise ProtocolError(errors[0] if len(errors) == 1 else f"{path} has the wrong type ({_kind(value)})")
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{path} must be a list, got {_kind(value)}")
        if len(value) > cap.items:
            raise ProtocolError(f"{path} has {len(value)} entries; at most {cap.items} are accepted, send fewer")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{path}[{i}]", cap) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{path} must be a map, got {_kind(value)}")
        if len(value) > cap.items:
            raise ProtocolError(f"{path} has {len(value)} entries; at most {cap.items} are accepted, send fewer")
        key_t, val_t = typing.get_args(hint)
        key_cap = _key_cap(cap.keys)
        return {
            _coerce(k, key_t, f"{path} key", key_cap): _coerce(v, val_t, f"{path}[{k!r:.40}]", cap)
            for k, v in value.items()
        }
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint.from_wire(value, path)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        # only a string is shown: Enum's own error quotes any value, past the recursion limit for a deep one
        got = repr(value[:40]) if isinstance(value, str) else _kind(value)
        raise ProtocolError(f"{path} must be one of {', '.join(m.value for m in hint)}, got {got}")
    raise TypeError(f"no wire rule for {hint!r} at {path}")  # a bug in a message definition


# -- registration and heartbeat ---------------------------------------------------------


@dataclass(frozen=True)
class HostFacts(Message):
    """What a volunteer's machine offers, shown to operators."""

    cores: int = 0
    memory: int = 0
    os: str = ""
    arch: str = ""  # as Docker names it: amd64, arm64, ...
    docker: str = ""
    gpus: int = 0


@dataclass(frozen=True)
class RegisterRequest(Message):
    """Sent with a volunteer account's token (or none, where the master enrolls openly)."""

    name: str
    slots: int = 1
    host: HostFacts = field(default_factory=HostFacts)


@dataclass(frozen=True)
class RegisterReply(Message):
    client: str
    token: str
    heartbeat_interval: float


@dataclass(frozen=True)
class ContainerInfo(Message):
    """One container a client runs for us, as `docker ps` would show it."""

    container: str  # the 12-character short id
    attempt: str
    unit: str
    job: str
    image: str
    cpus: float
    memory: int
    state: str = "running"
    started_at: float = 0.0
    cpu_percent: float | None = None
    memory_usage: int | None = None


@dataclass(frozen=True)
class Heartbeat(Message):
    caps: ClassVar[Mapping[str, Cap]] = {"containers": Cap(items=MAX_CONTAINERS_LISTED)}

    slots: int
    busy: int = 0
    containers: list[ContainerInfo] = field(default_factory=list)
    paused: bool = False  # the volunteer paused this client: it leases nothing, its containers are paused
    # what the volunteer donates, for the master to tell a job that no client can run it why
    memory: int = 0  # bytes of memory (0: not said)
    gpus: int = 0
    disk: int = 0  # bytes of free disk in the client's work directory (0: not said)


class Action(StrEnum):
    """What the master orders a client to do with one of its attempts."""

    ABORT = "abort"  # stop and remove its containers: the master no longer wants it
    PAUSE = "pause"  # its job is suspended: pause its containers (docker pause), keep the attempt
    RESUME = "resume"  # its job was resumed: unpause them (unless the volunteer paused the client)


@dataclass(frozen=True)
class Command(Message):
    """An order carried by a heartbeat reply, for one attempt. A client ignores an action it
    does not know (a newer master's)."""

    action: str  # an Action
    attempt: str = ""


@dataclass(frozen=True)
class HeartbeatReply(Message):
    caps: ClassVar[Mapping[str, Cap]] = {"commands": Cap(items=MAX_CONTAINERS_LISTED)}

    commands: list[Command] = field(default_factory=list)
    interval: float = 10.0


# -- leases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRequest(Message):
    """What a client asks for: up to ``max_units`` units that fit in what it has free."""

    caps: ClassVar[Mapping[str, Cap]] = {"images": Cap(items=MAX_IMAGES)}

    max_units: int
    cpus: float = 1.0
    memory: int = 1 << 40
    images: list[str] = field(default_factory=list)
    gpus: int = 0
    disk: int = 1 << 62  # bytes


@dataclass(frozen=True)
class InputRef(Message):
    """One input file of a unit: placed at /input/<name>, fetched from <url>, verified by hash;
    or, for a file the master makes from the job itself (a sweep's params.json), sent as
    ``data`` in the grant, with no url: nothing stored per unit, nothing to download."""

    caps: ClassVar[Mapping[str, Cap]] = {"url": Cap(length=MAX_URL)}

    name: str
    hash: str
    size: int
    url: str
    data: bytes | None = None


@dataclass(frozen=True)
class ContainerSpec(Message):
    """Another container of a multi-container unit (a sidecar): started before the grant's own
    container on the unit's private network, where it is reachable by ``name``. It has the
    grant's cpu and memory limits, and none of the unit's files."""

    caps: ClassVar[Mapping[str, Cap]] = {"command": COMMAND, "env": COMMAND}

    name: str
    image: str
    command: list[str] = field(default_factory=list)  # empty: the image's own
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Grant(Message):
    """One leased attempt: everything a client needs to run one unit."""

    caps: ClassVar[Mapping[str, Cap]] = {
        "command": COMMAND,
        "env": COMMAND,
        "inputs": Cap(items=MAX_INPUTS),
        "sidecars": Cap(items=MAX_CONTAINERS),
    }

    attempt: str
    job: str
    unit: str
    kind: UnitKind
    image: str
    command: list[str]
    env: dict[str, str]
    cpus: float
    memory: int
    timeout: float
    deadline: float
    inputs: list[InputRef]
    mode: str = "batch"
    sidecars: list[ContainerSpec] = field(default_factory=list)  # the unit's other containers, if any
    main_name: str = ""  # with sidecars: the name of the grant's own (main) container on the unit's network
    gpus: int = 0  # GPUs for the main container (a Docker device request)

    @property
    def unit_cpus(self) -> float:
        """What the unit takes of a client's cpus: each of its containers has the grant's limit."""
        return self.cpus * (1 + len(self.sidecars))

    @property
    def unit_memory(self) -> int:
        """What the unit takes of a client's memory: each of its containers has the grant's limit."""
        return self.memory * (1 + len(self.sidecars))


@dataclass(frozen=True)
class LeaseReply(Message):
    caps: ClassVar[Mapping[str, Cap]] = {"attempts": Cap(items=MAX_LEASE)}

    attempts: list[Grant]
    retry_after: float = 0.0


# -- results and release --------------------------------------------------------------------


@dataclass(frozen=True)
class ResultReport(Message):
    """The outcome of one attempt. A success carries its output hash, and the output bytes
    inline unless they were uploaded as a blob first."""

    caps: ClassVar[Mapping[str, Cap]] = {"stderr_tail": Cap(length=STDERR_TAIL)}

    attempt: str
    status: ResultStatus
    error: ErrorKind | None = None
    exit_code: int | None = None
    output_hash: str | None = None
    output: bytes | None = None
    output_size: int | None = None
    stderr_tail: str = ""
    runtime: float = 0.0
    peak_memory: int | None = None

    def __post_init__(self) -> None:
        try:  # a report built in Python from a plain string holds the enum all the same
            object.__setattr__(self, "status", ResultStatus(self.status))
        except ValueError:
            choices = ", ".join(ResultStatus)
            raise ProtocolError(f"status of attempt {self.attempt!r:.40} must be one of {choices}") from None
        if self.status == ResultStatus.SUCCEEDED and self.output_hash is None:
            raise ProtocolError(f"a succeeded result needs output_hash (attempt {self.attempt!r:.40})")
        if self.status == ResultStatus.ERRORED and self.error is None:
            raise ProtocolError(f"an errored result needs error (attempt {self.attempt!r:.40})")


@dataclass(frozen=True)
class ResultBatch(Message):
    caps: ClassVar[Mapping[str, Cap]] = {"results": Cap(items=MAX_BATCH)}

    results: list[ResultReport]


@dataclass(frozen=True)
class Ack(Message):
    """The master's answer to one result or release: taken, or refused with the reason;
    ``again``: refused because it arrived damaged (its output does not match its hash), so the
    client sends it again rather than forgetting it."""

    caps: ClassVar[Mapping[str, Cap]] = {"reason": Cap(length=4096)}

    attempt: str
    accepted: bool
    reason: str = ""
    again: bool = False


@dataclass(frozen=True)
class AckBatch(Message):
    caps: ClassVar[Mapping[str, Cap]] = {"acks": Cap(items=MAX_BATCH)}

    acks: list[Ack]


@dataclass(frozen=True)
class ReleaseRequest(Message):
    caps: ClassVar[Mapping[str, Cap]] = {"attempts": Cap(items=MAX_BATCH)}

    attempts: list[str]
