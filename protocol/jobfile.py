"""The job file a scientist writes, validated into a frozen JobSpec.

    {"name": "wordfreq", "image": "dockercomp/wordfreq", "command": ["python3", "/app/map.py"],
     "chunking": {"by": "lines", "size": "1MiB"},
     "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 3},
     "resources": {"cpus": 1, "memory": "256MiB", "timeout": "5m"},
     "reduce": {"command": ["python3", "/app/reduce.py"]}}

A parameter sweep (a DRMAA2 job array) gives ``"sweep"`` instead of input files: either a
range ``{"start": 1, "end": 101, "step": 10}`` or a list of parameter objects. A unit of
several containers (DGrid's multi-container units) lists them in ``"containers"``: the one
marked ``"main": true`` is the job's own image, command and env, the others are its sidecars,
all on one private network where each is reachable by its name. Everything but name and
image has a default. The same parser runs in the CLI (exit code 2)
and in the master (HTTP 400), so a bad job file is refused before anything is created.
"""

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .codec import refuse_lone_surrogates
from .errors import ProtocolError
from .limits import ENV_NAME_RE, INT64_MAX, INT64_MIN
from .quantities import parse_duration, parse_size

CHUNK_MODES = ("bytes", "lines", "records", "files")
# batch: one container per unit; service: warm containers fed units over a socket (client/service.py)
EXEC_MODES = ("batch", "service")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._\-/:@]{0,254}")
MAX_SWEEP = 1_000_000  # units of one range sweep: each is a unit row on the master
MAX_SWEEP_POINTS = 100_000  # parameter objects a listed sweep may name (each is in the job file itself)
MAX_CONTAINERS = 8  # containers of one unit, the main one included: each is a sandbox with the job's limits
# a container's name on its unit's network: one lowercase DNS label
CONTAINER_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Chunking:
    """How inputs become units. ``size`` is bytes when ``size_unit`` is "bytes", else a count
    of lines, records or files per unit."""

    by: str = "lines"
    size: int = 1 << 20
    size_unit: str = "bytes"
    separator: str = ">"


@dataclass(frozen=True)
class Redundancy:
    """BOINC-style replication: issue ``replicas`` attempts on distinct clients; a unit is done
    when ``quorum`` successes agree on the output hash; give up after ``max_attempts``. With
    ``adaptive``, a volunteer with a long record of valid results may decide a unit alone (the
    master's trust and spot-check settings); found out later, its units are decided again."""

    replicas: int = 1
    quorum: int = 1
    max_attempts: int = 3
    adaptive: bool = False


# CPU architectures as Docker names them (an image config's "architecture"), and the names
# machines give themselves for them (platform.machine())
ARCHES = ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")
_MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386"}
MAX_GPUS = 16


def docker_arch(machine: str) -> str:
    """A machine's architecture as Docker names it (x86_64 is amd64); "" when unknown."""
    name = machine.strip().lower()
    name = _MACHINE_ARCH.get(name, name)
    return name if name in ARCHES else ""


@dataclass(frozen=True)
class Resources:
    """What one container of a unit needs: limits it runs under, and what a volunteer must
    have for it (units go only to clients that have it free)."""

    cpus: float = 1.0
    memory: int = 256 << 20
    timeout: float = 300.0
    gpus: int = 0  # GPUs for the main container (Docker device requests)
    disk: int = 0  # bytes of free disk a unit needs on the volunteer (inputs, output); 0: not asked
    arch: str = ""  # the CPU architecture (amd64, arm64, ...); "": the image's, set when submitted


@dataclass(frozen=True)
class RangeSweep:
    """Split the integers ``start <= n < end`` (end exclusive, as in Python's range) into
    units of ``step`` numbers: unit i gets START = start + i*step and END = min(START + step,
    end), so the units cover the interval exactly once."""

    start: int
    end: int
    step: int = 1

    def __len__(self) -> int:
        return -(-(self.end - self.start) // self.step)

    def params(self, index: int) -> dict[str, Scalar]:
        low = self.start + index * self.step
        return {"START": low, "END": min(low + self.step, self.end)}

    def to_json(self) -> dict[str, int]:
        return {"start": self.start, "end": self.end, "step": self.step}


@dataclass(frozen=True)
class ListSweep:
    """One unit per parameter object, in list order."""

    points: tuple[tuple[tuple[str, Scalar], ...], ...]

    def __len__(self) -> int:
        return len(self.points)

    def params(self, index: int) -> dict[str, Scalar]:
        return dict(self.points[index])

    def to_json(self) -> list[dict[str, Scalar]]:
        return [dict(point) for point in self.points]


Sweep = RangeSweep | ListSweep


@dataclass(frozen=True)
class Container:
    """One container of a multi-container unit. The main one (``main``) is the job's own
    image, command and env, and gets /input and /output; any other (a sidecar) has its own
    image, command (empty: the image's own) and env, and no files of the unit."""

    name: str  # its host name on the unit's private network
    image: str = ""  # "" for the main container: the job's image
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    main: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.main:
            return {"name": self.name, "main": True}
        return {"name": self.name, "image": self.image, "command": list(self.command) or None, "env": dict(self.env)}


def params_env(params: dict[str, Scalar]) -> dict[str, str]:
    """A unit's parameters as environment variables: strings as they are, numbers and
    booleans as JSON writes them (``3``, ``0.5``, ``true``)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


PARAMS_FILE = "params.json"  # a sweep unit's parameters, in its /input


def params_json(params: dict[str, Scalar]) -> bytes:
    """A unit's parameters as its /input/params.json: the same bytes for the same
    parameters, whichever master makes them."""
    return json.dumps(params, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class JobSpec:
    name: str
    image: str
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    chunking: Chunking = field(default_factory=Chunking)
    redundancy: Redundancy = field(default_factory=Redundancy)
    resources: Resources = field(default_factory=Resources)
    reduce_command: tuple[str, ...] | None = None
    priority: int = 0
    mode: str = "batch"
    sweep: Sweep | None = None  # a parameter sweep: its units take no input files
    containers: tuple[Container, ...] = ()  # a multi-container unit's, the main one among them; () for one

    @property
    def sidecars(self) -> tuple[Container, ...]:
        """The containers a unit runs beside its main one (none for a job of one container)."""
        return tuple(c for c in self.containers if not c.main)

    @property
    def main_name(self) -> str:
        """The main container's name on the unit's network ("" for a job of one container)."""
        return next((c.name for c in self.containers if c.main), "")

    @property
    def unit_cpus(self) -> float:
        """What one unit takes of a volunteer's cpus: every container of it has the job's limit."""
        return self.resources.cpus * max(1, len(self.containers))

    @property
    def unit_memory(self) -> int:
        """What one unit takes of a volunteer's memory: every container of it has the job's limit."""
        return self.resources.memory * max(1, len(self.containers))

    def to_dict(self) -> dict[str, Any]:
        """The canonical job file for this spec (parse_jobfile(spec.to_dict()) == spec)."""
        d = asdict(self)
        chunking = d["chunking"]
        if chunking.pop("size_unit") == "bytes":
            chunking["size"] = f"{chunking['size']}B"
        d["command"] = list(self.command) or None  # None: the image's own entrypoint
        d["env"] = dict(self.env)
        reduce_command = d.pop("reduce_command")
        if reduce_command is not None:
            d["reduce"] = {"command": list(reduce_command)}
        if self.sweep is None:
            del d["sweep"]
        else:
            d["sweep"] = self.sweep.to_json()
            del d["chunking"]  # a sweep has no input files to chunk
        if self.containers:
            d["containers"] = [c.to_json() for c in self.containers]
        else:
            del d["containers"]
        return d


_TOP_KEYS = {
    "name",
    "image",
    "command",
    "env",
    "chunking",
    "redundancy",
    "resources",
    "reduce",
    "priority",
    "mode",
    "sweep",
    "containers",
    "description",
}


def parse_jobfile(data: object) -> JobSpec:
    """Validate a decoded job file; raise ProtocolError saying what to fix."""
    try:
        refuse_lone_surrogates(data, "the job file is not text")  # given as Python objects, not decoded JSON
        return _parse_jobfile(data)
    except RecursionError:  # a refusal quoting a value nested a thousand levels deep (repr recurses)
        raise ProtocolError("the job file nests lists or objects too deeply (a field takes a few levels)") from None


def _parse_jobfile(data: object) -> JobSpec:
    if not isinstance(data, dict):
        raise ProtocolError("a job file must be a JSON object with at least name and image")
    _no_unknown(data, _TOP_KEYS, "job file")
    name = _string(data, "name", required=True)
    if not _NAME_RE.fullmatch(name):
        raise ProtocolError("name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    image = _string(data, "image", required=True)
    if not _IMAGE_RE.fullmatch(image):
        raise ProtocolError(
            f"image {image!r:.80} is not a valid Docker image reference (lowercase, e.g. dockercomp/wordfreq)"
        )
    mode = _string(data, "mode") or "batch"
    if mode not in EXEC_MODES:
        raise ProtocolError(f"mode must be one of {', '.join(EXEC_MODES)}, got {mode!r:.40}")
    priority = data.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        raise ProtocolError("priority must be an integer from -1000 to 1000")
    reduce_command = None
    if data.get("reduce") is not None:
        reduce = _section(data, "reduce", {"command"})
        reduce_command = _command(reduce.get("command"), "reduce.command", required=True)
    sweep = _sweep(data.get("sweep"))
    if sweep is not None and data.get("chunking") is not None:
        raise ProtocolError("a sweep job has no input files to chunk: remove chunking, or the sweep")
    spec = JobSpec(
        name=name,
        image=image,
        command=_command(data.get("command"), "command"),
        env=_env(data.get("env")),
        chunking=_chunking(_section(data, "chunking", {"by", "size", "separator"})),
        redundancy=_redundancy(_section(data, "redundancy", {"replicas", "quorum", "max_attempts", "adaptive"})),
        resources=_resources(_section(data, "resources", {"cpus", "memory", "timeout", "gpus", "disk", "arch"})),
        reduce_command=reduce_command,
        priority=priority,
        mode=mode,
        sweep=sweep,
        containers=_containers(data.get("containers")),
    )
    if spec.mode == "service" and spec.containers:
        raise ProtocolError('a job of several containers runs in batch mode only: remove "mode", or "containers"')
    return spec


def _containers(value: object) -> tuple[Container, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_CONTAINERS:
        raise ProtocolError(
            f"containers must be a list of 2 to {MAX_CONTAINERS} containers, the main one among them, e.g. "
            '[{"name": "main", "main": true}, {"name": "kv", "image": "dockercomp/kv"}]'
        )
    found: list[Container] = []
    for i, entry in enumerate(value):
        where = f"containers[{i}]"
        if not isinstance(entry, dict):
            raise ProtocolError(f"{where} must be an object with name and image (or main: true)")
        _no_unknown(entry, {"name", "image", "command", "env", "main"}, where)
        name = entry.get("name")
        if not isinstance(name, str) or not CONTAINER_NAME_RE.fullmatch(name):
            raise ProtocolError(
                f"{where}.name must be a host name: 1-63 lowercase letters, digits and '-', "
                f"not starting or ending with '-'; got {name!r:.70}"
            )
        if any(c.name == name for c in found):
            raise ProtocolError(f"{where}.name: {name} names another container too; each needs a name of its own")
        main = entry.get("main", False)
        if not isinstance(main, bool):
            raise ProtocolError(f"{where}.main ({name}) must be true or false")
        if main:
            given = sorted(k for k in ("image", "command", "env") if entry.get(k) is not None)
            if given:
                raise ProtocolError(
                    f"{where} ({name}) is the main container: it runs the job's own image, command and env; "
                    f"set {', '.join(given)} at the top level of the job file"
                )
            found.append(Container(name=name, main=True))
            continue
        image = entry.get("image")
        if image is None:
            raise ProtocolError(f'{where} ({name}) needs an image, or "main": true to be the job\'s own container')
        if not isinstance(image, str) or not _IMAGE_RE.fullmatch(image):
            raise ProtocolError(
                f"{where}.image ({name}) must be a Docker image reference (lowercase, e.g. dockercomp/kv), "
                f"got {image!r:.80}"
            )
        command = _command(entry.get("command"), f"{where}.command")
        found.append(Container(name, image, command, _env(entry.get("env"), f"{where}.env")))
    mains = [c.name for c in found if c.main]
    if len(mains) != 1:
        raise ProtocolError(
            'exactly one of containers must be the main one ("main": true), the job\'s own image and command; '
            f"{'none is' if not mains else ', '.join(mains) + ' are'}"
        )
    return tuple(found)


def _chunking(d: dict[str, Any]) -> Chunking:
    by = d.get("by", "lines")
    if by not in CHUNK_MODES:
        raise ProtocolError(f"chunking.by must be one of {', '.join(CHUNK_MODES)}, got {by!r:.40}")
    raw = d.get("size", "1MiB")
    if isinstance(raw, int) and not isinstance(raw, bool) and by != "bytes":
        size, unit = raw, "count"
    else:
        size, unit = parse_size(raw, "chunking.size"), "bytes"
    if size <= 0:
        raise ProtocolError("chunking.size must be greater than zero")
    separator = d.get("separator", ">")
    if not isinstance(separator, str) or not separator or "\n" in separator or len(separator) > 64:
        raise ProtocolError("chunking.separator must be a non-empty string without newlines (e.g. '>')")
    return Chunking(by=by, size=size, size_unit=unit, separator=separator)


def _redundancy(d: dict[str, Any]) -> Redundancy:
    replicas = _int(d, "replicas", 1, "redundancy", 1, 16)
    quorum = _int(d, "quorum", replicas // 2 + 1, "redundancy", 1, 16)  # a majority by default
    max_attempts = _int(d, "max_attempts", max(3, replicas + 2), "redundancy", 1, 100)
    if quorum > replicas:
        raise ProtocolError(f"redundancy.quorum ({quorum}) cannot exceed redundancy.replicas ({replicas})")
    if max_attempts < replicas:
        raise ProtocolError(f"redundancy.max_attempts ({max_attempts}) must be at least replicas ({replicas})")
    adaptive = d.get("adaptive", False)
    if not isinstance(adaptive, bool):
        raise ProtocolError("redundancy.adaptive must be true or false")
    return Redundancy(replicas=replicas, quorum=quorum, max_attempts=max_attempts, adaptive=adaptive)


def _resources(d: dict[str, Any]) -> Resources:
    cpus = d.get("cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not 0 < cpus <= 256:
        raise ProtocolError("resources.cpus must be a number greater than 0 (e.g. 1 or 0.5)")
    memory = parse_size(d.get("memory", "256MiB"), "resources.memory")
    if memory < 6 << 20:
        raise ProtocolError("resources.memory must be at least 6MiB (Docker's minimum)")
    if memory > INT64_MAX:  # Docker and msgpack take a signed 64-bit integer
        raise ProtocolError("resources.memory must be less than 8EiB")
    timeout = parse_duration(d.get("timeout", "5m"), "resources.timeout")
    if not 0 < timeout <= 7 * 86400:
        raise ProtocolError("resources.timeout must be more than 0 and at most 7d")
    gpus = d.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= MAX_GPUS:
        raise ProtocolError(f"resources.gpus must be a whole number from 0 to {MAX_GPUS}")
    disk = parse_size(d.get("disk", 0), "resources.disk")
    if disk > INT64_MAX:
        raise ProtocolError("resources.disk must be less than 8EiB")
    arch = d.get("arch", "")
    if not isinstance(arch, str) or (arch and arch not in ARCHES):
        raise ProtocolError(f"resources.arch must be one of {', '.join(ARCHES)} (or left out: the image's), "
                            f"got {arch!r:.40}")  # fmt: skip
    return Resources(cpus=float(cpus), memory=memory, timeout=timeout, gpus=gpus, disk=disk, arch=arch)


def _sweep(value: object) -> Sweep | None:
    if value is None:
        return None
    if isinstance(value, dict):
        _no_unknown(value, {"start", "end", "step"}, "sweep")
        if "start" not in value or "end" not in value:
            raise ProtocolError('sweep needs start and end, e.g. {"start": 1, "end": 101, "step": 10}')
        start = _int(value, "start", 0, "sweep", INT64_MIN, INT64_MAX)
        end = _int(value, "end", 0, "sweep", INT64_MIN, INT64_MAX)
        step = value.get("step", 1)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= INT64_MAX:
            raise ProtocolError(f"sweep.step must be a positive integer, got {step!r:.40}")
        if end <= start:
            raise ProtocolError(
                f"sweep.end ({end}) must be greater than sweep.start ({start}); "
                "end is exclusive, so a sweep over 1..100 is start 1, end 101"
            )
        units = -(-(end - start) // step)
        if units > MAX_SWEEP:
            raise ProtocolError(f"the sweep makes {units} units, more than {MAX_SWEEP}; use a larger step")
        return RangeSweep(start, end, step)
    if not isinstance(value, list):
        raise ProtocolError('sweep must be {"start", "end", "step"} or a list of parameter objects')
    if not value:
        raise ProtocolError("sweep is an empty list: give one parameter object per unit")
    if len(value) > MAX_SWEEP_POINTS:
        raise ProtocolError(f"the sweep lists {len(value)} parameter objects, more than {MAX_SWEEP_POINTS}")
    return ListSweep(tuple(_point(point, f"sweep[{i}]") for i, point in enumerate(value)))


def _point(point: object, where: str) -> tuple[tuple[str, Scalar], ...]:
    if not isinstance(point, dict) or not point or len(point) > 256:
        raise ProtocolError(f'{where} must be an object of 1 to 256 parameters, e.g. {{"SEED": 7}}')
    for key, val in point.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise ProtocolError(
                f"{where}: parameter name {key!r:.40} must be letters, digits and '_', not starting with a digit"
            )
        if isinstance(val, str):
            ok = "\0" not in val and len(val) <= 4096
        elif isinstance(val, bool):
            ok = True
        elif isinstance(val, int):
            ok = INT64_MIN <= val <= INT64_MAX
        else:
            ok = isinstance(val, float) and math.isfinite(val)
        if not ok:
            raise ProtocolError(
                f"{where}.{key} must be a string (up to 4096 characters), a finite number, true or false; "
                f"got {val!r:.40}"
            )
    return tuple(sorted(point.items()))


def _section(data: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{key} must be an object with keys {', '.join(sorted(allowed))}")
    _no_unknown(value, allowed, key)
    return value


def _name(key: object) -> str:
    """A key as a refusal shows it: quoted, escapes and all, unless printable (it could hold a line
    break that forges a line of the master's log)."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _no_unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise ProtocolError(
            f"{where}: unknown key(s) {', '.join(sorted(_name(k) for k in unknown))[:100]}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _string(d: dict[str, Any], key: str, required: bool = False) -> str:
    value = d.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{key} is required and must be a non-empty string")
    return value


def _int(d: dict[str, Any], key: str, default: int, where: str, low: int, high: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{where}.{key} must be an integer from {low} to {high}, got {value!r:.40}")
    return value


def _command(value: object, what: str, required: bool = False) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if (
        not isinstance(value, list)
        or not value
        or len(value) > 1000
        or not all(isinstance(a, str) and "\0" not in a for a in value)
    ):
        raise ProtocolError(f'{what} must be a non-empty list of strings, e.g. ["python3", "/app/run.py"]')
    return tuple(value)


def _env(value: object, what: str = "env") -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > 256:
        raise ProtocolError(f'{what} must be an object of strings, e.g. {{"LANG": "C.UTF-8"}}')
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise ProtocolError(f"{what} name {key!r:.40} must be letters, digits and '_', not starting with a digit")
        if not isinstance(val, str) or "\0" in val:
            raise ProtocolError(f"{what} {key} must be a string")
    return tuple(sorted(value.items()))
