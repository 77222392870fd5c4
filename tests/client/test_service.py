"""ServiceRunner against the real engine: warm containers reused by the units of one job
and limits, a new one for anything else, every way a unit ends (done, raised, died, out of
memory, past its timeout, aborted, a container that breaks the framing), the pool taking
the next unit after each, idle containers stopped, pause and resume, what the heartbeat
sees, the sandbox as `docker inspect` shows it, and nothing left behind."""

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from dockercomp.client.attempt import check_grant
from dockercomp.client.runner import LABEL_CLIENT, LABEL_JOB, RunSpec
from dockercomp.client.service import ServiceRunner
from dockercomp.protocol.messages import ContainerSpec, ErrorKind, Grant, UnitKind

MIB = 1 << 20
CLIENT = f"test-service-{uuid.uuid4().hex[:10]}"
SERVE = ("python3", "/app/probe.py", "serve")


def ours(docker_client: docker.DockerClient) -> list[str]:
    return [c["Id"] for c in docker_client.api.containers(all=True, filters={"label": f"{LABEL_CLIENT}={CLIENT}"})]


@pytest.fixture
def make_runner(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Callable[..., ServiceRunner]]:
    """ServiceRunner factory; at the end every runner is closed and none of the session's
    containers may be left."""
    made: list[ServiceRunner] = []

    def make(**options: object) -> ServiceRunner:
        fields: dict[str, object] = {"root": str(tmp_path / f"service-{len(made)}"), "max_containers": 2}
        fields.update(options)
        runner = ServiceRunner(docker_client, wait_slice=0.1, **fields)  # type: ignore[arg-type]
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()
    left = ours(docker_client)
    for container_id in left:
        docker_client.api.remove_container(container_id, force=True)
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def make_spec(tmp_path: Path, probe_image: str) -> Callable[..., RunSpec]:
    """A unit of the probe workload in service mode: its chunk says what it does."""
    counter = iter(range(1_000_000))

    def make(chunk: bytes = b"echo hello\n", **overrides: object) -> RunSpec:
        n = next(counter)
        inputs, outputs = tmp_path / f"in{n}", tmp_path / f"out{n}"
        inputs.mkdir()
        outputs.mkdir()
        (inputs / "chunk").write_bytes(chunk)
        fields: dict[str, object] = {
            "client": CLIENT, "attempt": f"attempt-{n}", "job": "job-1", "unit": f"unit-{n}",
            "image": probe_image, "command": SERVE, "env": (("GREETING", "hello"),), "cpus": 0.5,
            "memory": 64 * MIB, "timeout": 20.0, "input_dir": str(inputs), "output_dir": str(outputs),
            "output_limit": 8 * MIB, "mode": "service",
        }  # fmt: skip
        fields.update(overrides)
        return RunSpec(**fields)  # type: ignore[arg-type]

    return make


def result(spec: RunSpec) -> bytes | None:
    path = Path(spec.output_dir) / "result"
    return path.read_bytes() if path.exists() else None


def run(runner: ServiceRunner, spec: RunSpec, cancel: threading.Event | None = None):
    return runner.run(spec, cancel or threading.Event())


def test_units_of_one_job_share_one_warm_container(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner()
    specs = [make_spec(f"echo unit {i}\n".encode()) for i in range(6)]
    for i, spec in enumerate(specs):
        outcome = run(runner, spec)
        assert outcome.error is None and outcome.exit_code == 0, outcome
        assert result(spec) == f"ECHO UNIT {i}\n".encode()
    assert len(ours(docker_client)) == 1 == runner.warm_containers()
    assert runner.containers() == []  # idle: it runs no attempt
    (container,) = ours(docker_client)
    labels = docker_client.api.inspect_container(container)["Config"]["Labels"]
    assert labels[LABEL_CLIENT] == CLIENT and labels[LABEL_JOB] == "job-1"


def test_another_job_or_other_limits_get_a_container_of_their_own(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner(max_containers=2)
    assert run(runner, make_spec()).error is None
    assert run(runner, make_spec(memory=80 * MIB)).error is None
    assert runner.warm_containers() == 2
    first = set(ours(docker_client))
    # the pool is full: a third kind stops the longest idle container to make room
    assert run(runner, make_spec(job="job-2")).error is None
    assert runner.warm_containers() == 2 == len(ours(docker_client))
    assert len(first & set(ours(docker_client))) == 1
    assert run(runner, make_spec(env=(("GREETING", "other"),))).error is None
    assert runner.warm_containers() == 2


def test_every_way_a_unit_ends_and_the_pool_takes_the_next_unit_after_each(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner(max_containers=1)
    started: set[str] = set()

    def echo_works() -> None:
        spec = make_spec(b"echo after\n")
        assert run(runner, spec).error is None
        assert result(spec) == b"ECHO AFTER\n"
        started.update(ours(docker_client))

    echo_works()
    raised = run(runner, make_spec(b"raise\n"))
    assert (raised.error, raised.exit_code) == (ErrorKind.EXIT_NONZERO, 1)
    assert "ValueError: probe: raised as asked" in raised.stderr_tail and "Traceback" in raised.stderr_tail
    assert len(ours(docker_client)) == 1  # a function that raised leaves its container warm
    echo_works()
    assert len(started) == 1

    hung = run(runner, make_spec(b"hang\n", timeout=1.5))
    assert hung.error == ErrorKind.TIMEOUT and 1.5 <= hung.runtime < 4, hung
    assert ours(docker_client) == []  # killed and removed
    echo_works()

    oom = run(runner, make_spec(b"oom\n", memory=48 * MIB))
    assert oom.error == ErrorKind.OOM, oom
    echo_works()

    died = run(runner, make_spec(b"exit 3\n"))
    assert (died.error, died.exit_code) == (ErrorKind.EXIT_NONZERO, 3)
    assert "exiting with 3" in died.stderr_tail
    echo_works()

    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    aborted = run(runner, make_spec(b"sleep 30\n"), cancel)
    assert aborted.error == ErrorKind.ABORTED
    echo_works()
    assert len(started) == 5  # one container for each end that took it down, and the first


def test_a_container_that_breaks_the_framing_fails_its_unit_and_is_replaced(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner()
    hostile = (
        "import json, socket, struct, time\n"
        "s = socket.socket(socket.AF_UNIX); s.connect('/input/service.sock')\n"
        "def send(m): b = json.dumps(m).encode(); s.sendall(struct.pack('>I', len(b)) + b)\n"
        "send({'type': 'ready'})\n"
        "n = struct.unpack('>I', s.recv(4))[0]; unit = json.loads(s.recv(n))\n"
        "send({'type': 'error', 'id': unit['id'], 'error': 'x', 'traceback': '\\x1b[2J\\x1b]0;owned\\x07red\\rline'})\n"
        "n = struct.unpack('>I', s.recv(4))[0]; unit = json.loads(s.recv(n))\n"
        "s.sendall(struct.pack('>I', 1 << 30)); time.sleep(60)\n"
    )
    command = ("python3", "-c", hostile)
    escaped = run(runner, make_spec(command=command))
    assert escaped.error == ErrorKind.EXIT_NONZERO
    assert "\x1b" not in escaped.stderr_tail and "\x07" not in escaped.stderr_tail and "red" in escaped.stderr_tail
    huge = run(runner, make_spec(command=command))
    assert huge.error == ErrorKind.EXIT_NONZERO and "broke the service protocol" in huge.stderr_tail, huge
    assert ours(docker_client) == []

    never_ready = ("python3", "-c", "import time; time.sleep(60)")
    silent = run(runner, make_spec(command=never_ready, timeout=1.0))
    assert silent.error == ErrorKind.TIMEOUT and "did not connect" in silent.stderr_tail
    crashes = run(runner, make_spec(command=("python3", "-c", "raise SystemExit(7)")))
    assert (crashes.error, crashes.exit_code) == (ErrorKind.EXIT_NONZERO, 7)
    assert ours(docker_client) == []


def test_idle_containers_stop_after_the_idle_time(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner(idle_timeout=0.5)
    assert run(runner, make_spec()).error is None
    assert len(ours(docker_client)) == 1
    deadline = time.monotonic() + 10
    while ours(docker_client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ours(docker_client) == [] and runner.warm_containers() == 0
    assert os.listdir(runner.root) == []  # its spool directory went with it


def test_a_busy_container_is_seen_paused_and_resumed_by_its_attempt(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec]
) -> None:
    runner = make_runner(stats_budget=0.2)
    assert run(runner, make_spec()).error is None  # warm
    spec = make_spec(b"sleep 3\n", timeout=2.5)
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(run(runner, spec)))
    worker.start()
    time.sleep(0.2)
    (busy,) = runner.containers()
    assert (busy.attempt, busy.unit, busy.state, busy.memory) == (spec.attempt, spec.unit, "running", 64 * MIB)
    assert runner.pause(spec.attempt)
    assert [c.state for c in runner.containers()] == ["paused"]
    time.sleep(1.2)  # paused time is not the unit's: 3s of sleep, 1.2s of them paused, fit its 2.5s
    assert runner.resume(spec.attempt)
    worker.join(10)
    assert outcomes[0].error is None, outcomes[0]
    assert result(spec) == b"SLEEP 3\n" and outcomes[0].runtime < 2.5
    assert runner.containers() == [] and not runner.pause(spec.attempt)
    assert run(runner, make_spec()).error is None  # the idle container is not left frozen


def test_the_warm_container_has_the_whole_sandbox_of_batch_mode(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner()
    spec = make_spec()
    assert run(runner, spec).error is None
    (container,) = ours(docker_client)
    info = docker_client.api.inspect_container(container)
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 256 and host["Memory"] == host["MemorySwap"] == 64 * MIB
    assert host["NanoCpus"] == 5 * 10**8 and "/tmp" in host["Tmpfs"]
    assert info["Config"]["User"] == "65534:65534"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/input"]["RW"] is False and mounts["/output"]["RW"] is True


def test_a_restart_removes_what_an_earlier_run_left_but_never_a_warm_container(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner()
    assert run(runner, make_spec()).error is None
    stale = Path(runner.root) / "c-stale"
    (stale / "in").mkdir(parents=True)
    assert runner.remove_leftovers(CLIENT) == 0
    assert len(ours(docker_client)) == 1 and not stale.exists()
    assert run(runner, make_spec()).error is None  # still warm, still working
    later = make_runner()  # the daemon again, after a crash: the first one's container is a leftover
    assert later.remove_leftovers(CLIENT) == 1
    assert ours(docker_client) == []


def test_a_batch_unit_runs_as_dockerrunner_runs_it(
    make_runner: Callable[..., ServiceRunner], make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    runner = make_runner()
    spec = dataclasses.replace(make_spec(b"echo batch\n"), mode="batch", command=("python3", "/app/probe.py"))
    assert run(runner, spec).error is None
    assert result(spec) == b"ECHO BATCH\n"
    assert runner.warm_containers() == 0 and ours(docker_client) == []
    assert ServiceRunner.modes == ("batch", "service")


def test_a_service_grant_runs_only_where_the_runner_runs_service_mode() -> None:
    grant = Grant(
        attempt="a1", job="j1", unit="u1", kind=UnitKind.MAP, image="dockercomp/wordfreq", command=["serve"],
        env={}, cpus=1.0, memory=64 * MIB, timeout=10.0, deadline=0.0, inputs=[], mode="service",
    )  # fmt: skip
    assert "not supported by this client (only batch)" in check_grant(grant)
    assert check_grant(grant, ServiceRunner.modes) == ""
    assert "cannot run in service mode" in check_grant(
        dataclasses.replace(grant, sidecars=[ContainerSpec("kv", "dockercomp/kv")], main_name="main"),
        ServiceRunner.modes,
    )
    assert "not supported" in check_grant(dataclasses.replace(grant, mode="warm"), ServiceRunner.modes)
