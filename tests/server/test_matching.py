"""What a unit needs against what clients have: a lease's Room, and why no online client can
run a job (shortfall)."""

import pytest

from dockercomp.protocol.jobfile import docker_arch, parse_jobfile
from dockercomp.protocol.messages import HostFacts, LeaseRequest
from dockercomp.server.matching import Room, shortfall
from dockercomp.server.models import Client


def spec(**resources):
    return parse_jobfile({"name": "m", "image": "a/b", "resources": resources})


def client(slots=2, memory=0, gpus=0, disk=0, arch="x86_64"):
    return Client("c", "c", 0.0, 0.0, slots=slots, host=HostFacts(arch=arch), memory=memory, gpus=gpus, disk=disk)


def test_a_room_takes_units_until_one_does_not_fit():
    room = Room.of(LeaseRequest(4, cpus=3.0, memory=1 << 30, gpus=1, disk=10 << 20), "x86_64")
    job = spec(cpus=1, memory="256MiB", gpus=1, disk="4MiB", arch="amd64")
    assert room.arch == "amd64" and room.fits(job)
    room.take(job)
    assert not room.fits(job)  # no GPU left
    assert room.fits(spec(cpus=2, memory="512MiB", disk="6MiB"))
    assert not Room.of(LeaseRequest(1, cpus=8.0), "aarch64").fits(spec(arch="amd64"))
    assert Room.of(LeaseRequest(1, cpus=8.0), "").fits(spec(arch="amd64"))  # an arch not told is not held against it


@pytest.mark.parametrize(
    ("resources", "clients", "resource", "needs", "largest"),
    [
        ({"cpus": 4}, [client(2), client(3)], "cpus", "4", "3"),
        ({"memory": "2GiB"}, [client(memory=1 << 30)], "memory", "2.0GiB", "1.0GiB"),
        ({"gpus": 1}, [client()], "gpus", "1", "0"),
        ({"disk": "10GiB"}, [client(disk=1 << 30)], "disk", "10.0GiB", "1.0GiB"),
        ({"arch": "arm64"}, [client(), client(arch="x86_64")], "arch", "arm64", "amd64"),
        ({"cpus": 4, "gpus": 1}, [client(4), client(1, gpus=1)], "resources", "4 cpus, 256.0MiB, 1 gpus, 0B disk", ""),
    ],
)
def test_shortfall_names_the_resource_and_the_most_offered(resources, clients, resource, needs, largest):
    why = shortfall(spec(**resources), clients)
    assert why is not None and (why.resource, why.needs) == (resource, needs)
    assert largest in why.largest and why.message()


def test_no_shortfall_when_one_client_could_run_it_and_none_online_is_said():
    assert shortfall(spec(cpus=2, gpus=1), [client(1), client(2, gpus=1)]) is None
    assert shortfall(spec(memory="8GiB"), [client(memory=0)]) is None  # a client that did not say its memory
    assert shortfall(spec(), []).message() == "no client is online"


def test_docker_arch():
    assert [docker_arch(m) for m in ("x86_64", "AARCH64", "arm64", "armv7l", "sparc", "")] == [
        "amd64", "arm64", "arm64", "arm", "", "",
    ]  # fmt: skip
