"""Multi-container units (client/group.py) on the real engine: a key-value service and a main
container that queries it by name, on a private network that leads nowhere else; every
container sandboxed and limited like a single one, all of them and the network removed after
every kind of end. And what the client checks of a multi-container grant before it runs
one: names, counts and images from a master that may be hostile, each image trusted, room
for every container."""

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from dockercomp.client import images
from dockercomp.client.attempt import check_grant
from dockercomp.client.docker_runner import DockerRunner
from dockercomp.client.runner import LABEL_ATTEMPT, LABEL_CLIENT, LABEL_JOB, LABEL_UNIT, RunSpec, Sidecar
from dockercomp.protocol.messages import ContainerSpec, ErrorKind, Grant
from tests import kv

from . import test_provision

MIB = 1024 * 1024
CLIENT = f"test-group-{uuid.uuid4().hex[:10]}"


def ours(docker_client: docker.DockerClient) -> tuple[list[str], list[str]]:
    """This session's containers and networks, found by label as `cleanup` finds them."""
    selector = {"label": f"{LABEL_CLIENT}={CLIENT}"}
    return (
        [c["Id"] for c in docker_client.api.containers(all=True, filters=selector)],
        [n["Id"] for n in docker_client.api.networks(filters=selector)],
    )


@pytest.fixture
def runner(docker_client: docker.DockerClient, base_image: str) -> Iterator[DockerRunner]:
    """A runner; after the test none of the session's containers or networks may be left."""
    yield DockerRunner(docker_client)
    containers, networks = ours(docker_client)
    for container_id in containers:
        docker_client.api.remove_container(container_id, force=True)
    for network_id in networks:
        docker_client.api.remove_network(network_id)
    assert (containers, networks) == ([], []), "left behind"


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., RunSpec]:
    """A unit of the base image: main runs ``main`` (python source), the kv sidecar kv.SERVICE."""
    counter = iter(range(1_000_000))

    def make(main: str = kv.QUERY, sidecars: tuple[Sidecar, ...] | None = None, **overrides: object) -> RunSpec:
        n = next(counter)
        inputs, outputs = tmp_path / f"in{n}", tmp_path / f"out{n}"
        inputs.mkdir()
        outputs.mkdir()
        (inputs / "chunk").write_text("colour blue\nshape round\n")
        if sidecars is None:
            sidecars = (Sidecar("kv", images.BASE_IMAGE, ("python3", "-c", kv.SERVICE), (("KV_SEED", "answer=42"),)),)
        fields: dict[str, object] = {
            "client": CLIENT, "attempt": f"attempt-{n}", "job": "job-1", "unit": f"unit-{n}",
            "image": images.BASE_IMAGE, "command": ("python3", "-c", main), "env": (("GREETING", "hello"),),
            "cpus": 0.5, "memory": 64 * MIB, "timeout": 60.0, "input_dir": str(inputs), "output_dir": str(outputs),
            "sidecars": sidecars, "name": "main",
        }  # fmt: skip
        fields.update(overrides)
        return RunSpec(**fields)  # type: ignore[arg-type]

    return make


def result(spec: RunSpec) -> str:
    return (Path(spec.output_dir) / "result").read_text()


def test_a_two_container_unit_finishes_and_leaves_nothing(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec()
    outcome = runner.run(spec, threading.Event())
    assert outcome.error is None, outcome
    assert outcome.exit_code == 0
    assert result(spec) == "colour=blue\nshape=round\nanswer=42\n"
    assert ours(docker_client) == ([], [])
    assert runner.containers() == []


def host_addresses() -> list[str]:
    """This host's own addresses as a container would aim at them (not loopback)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the outgoing address
        return [probe.getsockname()[0]]
    finally:
        probe.close()


# The main container tries every way out: the host through its default gateway (the bridge)
# and its own address, and the internet; it writes what it reached.
ESCAPE = """
import os, socket, struct
def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
targets = [(gateway(), int(os.environ["PORT"])), (os.environ["HOST"], int(os.environ["PORT"])), ("1.1.1.1", 80)]
reached = []
for host, port in targets:
    if host is None:
        continue
    try:
        socket.create_connection((host, port), timeout=2).close()
        reached.append(f"{host}:{port}")
    except OSError:
        pass
try:
    socket.getaddrinfo("example.com", 80)
    reached.append("dns")
except OSError:
    pass
open("/output/result", "w").write(",".join(reached) or "nothing")
"""


def test_the_units_network_leads_nowhere_but_to_its_containers(
    runner: DockerRunner, make_spec: Callable[..., RunSpec]
) -> None:
    listener = socket.create_server(("0.0.0.0", 0))  # a service of the volunteer's own
    try:
        port = listener.getsockname()[1]
        (host,) = host_addresses()
        spec = make_spec(ESCAPE, env=(("HOST", host), ("PORT", str(port))))
        outcome = runner.run(spec, threading.Event())
    finally:
        listener.close()
    assert outcome.error is None, outcome
    assert result(spec) == "nothing"


# Wait until the service answers, then until it is stopped.
WAIT = """
import socket, time
while True:
    try:
        socket.create_connection(("kv", 7000), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
open("/output/ready", "w").write("yes")
time.sleep(120)
"""


def test_every_container_is_sandboxed_limited_labelled_and_listed(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec(WAIT)
    cancel = threading.Event()
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(runner.run(spec, cancel)))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not (Path(spec.output_dir) / "ready").exists():
            assert worker.is_alive() and time.monotonic() < deadline, outcomes
            time.sleep(0.1)
        listed = runner.containers()
        assert sorted(c.image for c in listed) == [images.BASE_IMAGE] * 2
        assert {(c.attempt, c.unit, c.job, c.cpus, c.memory, c.state) for c in listed} == {
            (spec.attempt, spec.unit, spec.job, 0.5, 64 * MIB, "running")
        }
        containers, networks = ours(docker_client)
        assert len(containers) == 2 and len(networks) == 1
        network = docker_client.api.inspect_network(networks[0])
        assert network["Internal"] is True
        assert network["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
        labels = {LABEL_CLIENT: CLIENT, LABEL_JOB: spec.job, LABEL_UNIT: spec.unit, LABEL_ATTEMPT: spec.attempt}
        assert network["Labels"] == labels
        mounts = {}
        for container_id in containers:
            info = docker_client.api.inspect_container(container_id)
            host = info["HostConfig"]
            assert labels.items() <= info["Config"]["Labels"].items()  # (the image adds labels of its own)
            assert info["Config"]["User"] == images.NONROOT_USER
            assert host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"]
            assert host["SecurityOpt"] == ["no-new-privileges"]
            assert host["PidsLimit"] == 256
            assert (host["NanoCpus"], host["Memory"], host["MemorySwap"]) == (500_000_000, 64 * MIB, 64 * MIB)
            assert "/tmp" in host["Tmpfs"]
            assert host["NetworkMode"] == networks[0] or host["NetworkMode"] == network["Name"]
            assert list(info["NetworkSettings"]["Networks"]) == [network["Name"]]
            (name,) = set(info["NetworkSettings"]["Networks"][network["Name"]]["Aliases"]) & {"main", "kv"}
            env = dict(e.split("=", 1) for e in info["Config"]["Env"])
            mounts[name] = sorted((m["Destination"], m["RW"]) for m in info["Mounts"])
            assert ("GREETING" in env) == (name == "main")  # the job's env is the main container's
            assert ("KV_SEED" in env) == (name == "kv")
        assert mounts == {"main": [("/input", False), ("/output", True)], "kv": []}
    finally:
        cancel.set()
        worker.join(30)
    assert outcomes[0].error == ErrorKind.ABORTED, outcomes
    assert ours(docker_client) == ([], [])
    assert runner.containers() == []


def test_a_unit_past_its_timeout_is_killed_with_its_sidecars(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec("import time; time.sleep(60)", timeout=1.5)
    outcome = runner.run(spec, threading.Event())
    assert outcome.error == ErrorKind.TIMEOUT, outcome
    assert ours(docker_client) == ([], [])


def test_a_sidecar_that_died_is_named_in_the_failed_units_stderr(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    broken = Sidecar("kv", images.BASE_IMAGE, ("sh", "-c", "echo kv broke >&2; exit 3"))
    spec = make_spec(sidecars=(broken,), env=(("KV_WAIT", "3"),))
    outcome = runner.run(spec, threading.Event())
    assert outcome.error == ErrorKind.EXIT_NONZERO and outcome.exit_code == 1, outcome
    assert "container kv had exited with code 3: kv broke" in outcome.stderr_tail
    assert ours(docker_client) == ([], [])


def test_a_sidecar_whose_image_is_missing_fails_the_unit_by_name(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    missing = Sidecar("db", "sha256:" + "0" * 64)
    spec = make_spec(sidecars=(missing,))
    outcome = runner.run(spec, threading.Event())
    assert outcome.error == ErrorKind.IMAGE_MISSING, outcome
    assert outcome.stderr_tail.startswith("container db: ")
    assert not (Path(spec.output_dir) / "result").exists()
    assert ours(docker_client) == ([], [])


def test_a_sidecar_whose_command_cannot_run_fails_the_unit_by_name(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec(sidecars=(Sidecar("kv", images.BASE_IMAGE, ("/no/such/kv",)),))
    outcome = runner.run(spec, threading.Event())
    assert outcome.error == ErrorKind.EXIT_NONZERO and outcome.exit_code == 127, outcome
    assert "container kv could not run its command" in outcome.stderr_tail
    assert ours(docker_client) == ([], [])


def test_an_abort_before_the_start_creates_nothing(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    cancel = threading.Event()
    cancel.set()
    assert runner.run(make_spec(), cancel).error == ErrorKind.ABORTED
    assert ours(docker_client) == ([], [])


def test_leftover_networks_are_removed_with_leftover_containers(
    runner: DockerRunner, docker_client: docker.DockerClient
) -> None:
    labels = {LABEL_CLIENT: CLIENT, LABEL_ATTEMPT: "crashed"}
    network = docker_client.api.create_network(f"dockercomp-leftover-{uuid.uuid4().hex[:6]}", internal=True,
                                               labels=labels)  # fmt: skip
    container = docker_client.api.create_container(images.BASE_IMAGE, command=["true"], labels=labels,
                                                   host_config=docker_client.api.create_host_config(
                                                       network_mode=network["Id"]))  # fmt: skip
    assert ours(docker_client) == ([container["Id"]], [network["Id"]])
    assert runner.remove_leftovers(CLIENT) == 2
    assert ours(docker_client) == ([], [])


# -- what the client checks of a multi-container grant (the master may be hostile) -------------

SIDECAR_IMAGE = "sha256:" + "ef" * 32


def kv_grant(**fields: object) -> Grant:
    sidecar = ContainerSpec("kv", SIDECAR_IMAGE, ["python3", "/app/kv.py"], {"KV_SEED": "answer=42"})
    return replace(test_provision.grant(), **({"sidecars": [sidecar], "main_name": "main"} | fields))


def test_a_multi_container_grant_passes_the_checks() -> None:
    assert check_grant(kv_grant()) == ""
    assert check_grant(kv_grant(sidecars=[ContainerSpec(f"s{i}", SIDECAR_IMAGE) for i in range(7)])) == ""


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        (
            {"sidecars": [ContainerSpec(f"s{i}", SIDECAR_IMAGE) for i in range(8)]},
            "9 containers; this client runs at most 8",
        ),
        ({"main_name": ""}, "the main container's name '' is not a host name"),
        ({"main_name": "Main"}, "is not a host name"),
        ({"main_name": "main\nINFO forged"}, "is not a host name"),
        (
            {"sidecars": [ContainerSpec("main", SIDECAR_IMAGE)]},
            "container name 'main' is not a plain, unique host name",
        ),
        ({"sidecars": [ContainerSpec("kv", SIDECAR_IMAGE)] * 2}, "container name 'kv' is not a plain, unique"),
        ({"sidecars": [ContainerSpec("../etc", SIDECAR_IMAGE)]}, "container name '../etc' is not"),
        ({"sidecars": [ContainerSpec("k" * 64, SIDECAR_IMAGE)]}, "is not a plain, unique host name"),
        ({"sidecars": [ContainerSpec("kv", "")]}, "container kv names no image"),
        ({"sidecars": [ContainerSpec("kv", "img\x00")]}, "container kv names no image"),
        ({"sidecars": [ContainerSpec("kv", SIDECAR_IMAGE, ["a\x00b"])]}, "the command of container kv holds a NUL"),
        ({"sidecars": [ContainerSpec("kv", SIDECAR_IMAGE, env={"A=B": "x"})]}, "variable 'A=B' of container kv"),
        ({"sidecars": [ContainerSpec("kv", SIDECAR_IMAGE, env={"A": "x\x00"})]}, "variable 'A' of container kv"),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_a_hostile_multi_container_grant_is_refused(fields: dict[str, object], fragment: str) -> None:
    assert fragment in check_grant(kv_grant(**fields))


def test_every_image_of_the_unit_must_be_trusted_and_a_refusal_names_its_container(tmp_path: Path) -> None:
    project, public = test_provision.keys(tmp_path, "project")
    master = test_provision.StubMaster(
        test_provision.info(test_provision.IMAGE, project), test_provision.info(SIDECAR_IMAGE)
    )
    p = test_provision.provisioner(tmp_path, master, trust=public)
    error, tail = test_provision.outcome(p, kv_grant())
    assert error == ErrorKind.UNTRUSTED and tail.startswith("container kv: "), tail
    signed = test_provision.StubMaster(
        test_provision.info(test_provision.IMAGE, project), test_provision.info(SIDECAR_IMAGE, project)
    )
    p = test_provision.provisioner(tmp_path, signed, trust=public)
    assert test_provision.outcome(p, kv_grant()) == (None, "")
    assert signed.calls == 2  # each image's record, checked once
    error, tail = test_provision.outcome(p, kv_grant(sidecars=[ContainerSpec("kv", "dockercomp/kv:latest")]))
    assert (
        error == ErrorKind.REFUSED
        and tail == "container kv: image 'dockercomp/kv:latest' is not an image id; run by id only"
    )


def test_a_unit_needs_the_donated_room_for_each_of_its_containers(tmp_path: Path) -> None:
    p = test_provision.provisioner(tmp_path, test_provision.StubMaster(), allow_unsigned=True)  # 2 cpus, 1 GiB
    two = kv_grant(cpus=1.0, memory=512 << 20)
    assert (two.unit_cpus, two.unit_memory) == (2.0, 1 << 30)
    three = kv_grant(sidecars=[ContainerSpec("a", SIDECAR_IMAGE), ContainerSpec("b", SIDECAR_IMAGE)])
    assert test_provision.outcome(p, three) == (
        ErrorKind.REFUSED, "the unit asks 3 cpus for its 3 containers; this volunteer donated 2"
    )  # fmt: skip
    error, tail = test_provision.outcome(p, kv_grant(cpus=0.5, memory=600 << 20))
    assert error == ErrorKind.REFUSED and "of memory for its 2 containers" in tail, tail
