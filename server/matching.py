"""Which clients a job's units may go to: what a unit needs against what a client has.

A lease fills a client's free ``Room`` (cpus, memory, GPUs and disk it says are free, and the
architecture it registered with) unit by unit. A job whose units no online client could run
even when idle says why (``shortfall``): the resource, what it needs and the most any client
offers, instead of waiting silently.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dockercomp.protocol.jobfile import JobSpec, docker_arch
from dockercomp.protocol.messages import LeaseRequest
from dockercomp.protocol.quantities import format_size

from .models import Client


@dataclass
class Room:
    """What a client has free for the units of one lease; ``arch`` "" is not known."""

    cpus: float
    memory: int
    gpus: int = 0
    disk: int = 1 << 62
    arch: str = ""

    @classmethod
    def of(cls, request: LeaseRequest, arch: str) -> "Room":
        return cls(request.cpus, request.memory, request.gpus, request.disk, docker_arch(arch))

    def fits(self, spec: JobSpec) -> bool:
        """Whether one unit of this job fits what is left."""
        r = spec.resources
        return (
            spec.unit_cpus <= self.cpus + 1e-9
            and spec.unit_memory <= self.memory
            and r.gpus <= self.gpus
            and r.disk <= self.disk
            and (not r.arch or not self.arch or r.arch == self.arch)
        )

    def take(self, spec: JobSpec) -> None:
        self.cpus -= spec.unit_cpus
        self.memory -= spec.unit_memory
        self.gpus -= spec.resources.gpus
        self.disk -= spec.resources.disk


@dataclass(frozen=True)
class Shortfall:
    """Why no online client can run a job's units."""

    resource: str  # cpus, memory, gpus, disk, arch; "clients" when none is online
    needs: str
    largest: str  # the most an online client offers ("" for arch: the ones they have)

    def message(self) -> str:
        if self.resource == "clients":
            return "no client is online"
        if self.resource == "arch":
            return f"its image is {self.needs}; the online clients are {self.largest}"
        return f"a unit needs {self.needs} {self.resource}; the largest online client offers {self.largest}"

    def to_json(self) -> dict[str, str]:
        return {"resource": self.resource, "needs": self.needs, "largest": self.largest, "message": self.message()}


def shortfall(spec: JobSpec, online: Sequence[Client]) -> Shortfall | None:
    """The first resource no online client has enough of for one unit of this job, idle; None
    when one could run it. A client that did not say what it offers of something is not held
    against the job for it."""
    if not online:
        return Shortfall("clients", "", "")
    r = spec.resources
    if r.arch:
        arches = {docker_arch(c.host.arch) for c in online}
        if "" not in arches and r.arch not in arches:
            return Shortfall("arch", r.arch, ", ".join(sorted(arches)))
    count = "{:g}".format
    offers: list[tuple[str, float, list[float], Callable[[float], str]]] = [
        ("cpus", spec.unit_cpus, [float(c.slots) for c in online], count),
        ("memory", spec.unit_memory, [float(c.memory or 1 << 62) for c in online], lambda v: format_size(int(v))),
        ("gpus", r.gpus, [float(c.gpus) for c in online], count),
        ("disk", r.disk, [float(c.disk or 1 << 62) for c in online], lambda v: format_size(int(v))),
    ]
    for resource, needs, offered, show in offers:
        if needs and max(offered) < needs:
            return Shortfall(resource, show(needs), show(max(offered)))
    if any(Room(c.slots, c.memory or 1 << 62, c.gpus, c.disk or 1 << 62, docker_arch(c.host.arch)).fits(spec)
           for c in online):  # fmt: skip
        return None
    wanted = f"{spec.unit_cpus:g} cpus, {format_size(spec.unit_memory)}, {r.gpus} gpus, {format_size(r.disk)} disk"
    return Shortfall("resources", wanted, "each online client lacks one of them")
