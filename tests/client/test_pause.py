"""DockerRunner.pause and resume against the real engine: Docker itself reports the attempt's
container paused, then running again; time paused is not the unit's (its timeout and its
runtime leave it out); an abort of a paused container removes it; asking twice is harmless."""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from dockercomp.client.docker_runner import DockerRunner
from dockercomp.client.runner import LABEL_CLIENT, RunSpec
from dockercomp.protocol.messages import ErrorKind

from .test_docker_runner import CLIENT, HANDSHAKE, Background, make_spec, ours, runner, wait_for

__all__ = ["make_spec", "runner"]  # the fixtures, shared with test_docker_runner


def docker_state(docker_client: docker.DockerClient, attempt: str) -> list[str]:
    """State.Status of the attempt's containers, as `docker inspect` shows it."""
    found = docker_client.api.containers(all=True, filters={"label": [f"{LABEL_CLIENT}={CLIENT}"]})
    ids = [c["Id"] for c in found if (c.get("Labels") or {}).get("dockercomp.attempt") == attempt]
    return [docker_client.api.inspect_container(i)["State"]["Status"] for i in ids]


def started(spec: RunSpec) -> bool:
    return (Path(spec.output_dir) / "started").exists()


def test_pause_and_resume_as_docker_sees_them(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec(["python3", "-c", HANDSHAKE])
    assert not runner.pause(spec.attempt), "no container yet: nothing paused"
    began = time.monotonic()
    run = Background(runner, spec)
    wait_for(lambda: started(spec) and runner.pause(spec.attempt), what="the unit to start and pause")
    paused_at = time.monotonic()
    assert docker_state(docker_client, spec.attempt) == ["paused"]
    assert runner.pause(spec.attempt), "pausing again is harmless"
    (info,) = runner.containers()
    assert info.state == "paused" and info.cpu_percent is None and info.memory_usage is None, "no stats when paused"
    (Path(spec.input_dir) / "go").touch()
    time.sleep(1.0)
    assert run.outcome is None, "a paused unit does not go on"

    assert runner.resume(spec.attempt)
    paused = time.monotonic() - paused_at
    assert runner.resume(spec.attempt), "resuming again is harmless"
    outcome = run.join()
    assert outcome.error is None, outcome
    assert outcome.runtime < time.monotonic() - began - paused + 0.1, "the runtime leaves the time paused out"
    assert not runner.pause(spec.attempt) and not runner.resume(spec.attempt), "it ended: nothing to act on"


def test_a_resumed_container_runs_again_as_docker_sees_it(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec(["python3", "-c", HANDSHAKE])
    run = Background(runner, spec)
    wait_for(lambda: started(spec) and runner.pause(spec.attempt), what="the unit to start and pause")
    assert docker_state(docker_client, spec.attempt) == ["paused"]
    assert runner.resume(spec.attempt)
    assert docker_state(docker_client, spec.attempt) == ["running"]
    assert runner.containers()[0].state == "running"
    (Path(spec.input_dir) / "go").touch()
    assert run.join().error is None


def test_time_paused_does_not_count_towards_the_timeout(
    runner: DockerRunner, make_spec: Callable[..., RunSpec]
) -> None:
    """A unit of 2s (twenty sleeps of 0.1s: a frozen sleep's clock runs on, its steps do not)
    with a timeout of 6s, paused for 7s, still succeeds: it took over 8.5s from start to end."""
    script = "touch /output/started; for i in $(seq 20); do sleep 0.1; done; echo ok > /output/result"
    spec = make_spec(["sh", "-c", script], timeout=6.0)
    began = time.monotonic()
    run = Background(runner, spec)
    wait_for(lambda: started(spec) and runner.pause(spec.attempt), what="the unit to start and pause")
    time.sleep(7.0)
    assert runner.resume(spec.attempt)
    outcome = run.join()
    assert outcome.error is None, outcome
    assert time.monotonic() - began > 8.5
    assert 1.5 < outcome.runtime < 6.0, outcome.runtime


def test_a_unit_that_runs_past_its_timeout_still_times_out_after_a_pause(
    runner: DockerRunner, make_spec: Callable[..., RunSpec]
) -> None:
    spec = make_spec(["sh", "-c", "touch /output/started; sleep 60"], timeout=5.0)  # time to pause it on a busy host
    run = Background(runner, spec)
    wait_for(lambda: started(spec) and runner.pause(spec.attempt), what="the unit to start and pause")
    time.sleep(1.0)
    assert runner.resume(spec.attempt)
    began = time.monotonic()
    outcome = run.join()
    assert outcome.error is ErrorKind.TIMEOUT, outcome
    assert time.monotonic() - began < 8


def test_an_abort_of_a_paused_container_removes_it(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec(["python3", "-c", HANDSHAKE])
    cancel = threading.Event()
    run = Background(runner, spec, cancel)
    wait_for(lambda: started(spec) and runner.pause(spec.attempt), what="the unit to start and pause")
    assert docker_state(docker_client, spec.attempt) == ["paused"]
    cancel.set()
    outcome = run.join(15)
    assert outcome.error is ErrorKind.ABORTED, outcome
    assert ours(docker_client) == [] and runner.containers() == []


@pytest.mark.parametrize("containers", [2])
def test_every_container_of_an_attempt_is_paused(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient, containers: int
) -> None:
    """Several containers may serve one attempt: pause and resume act on all of them."""
    first = make_spec(["python3", "-c", HANDSHAKE], attempt="shared-attempt")
    specs = [first] + [make_spec(["python3", "-c", HANDSHAKE], attempt="shared-attempt") for _ in range(containers - 1)]
    other = make_spec(["python3", "-c", HANDSHAKE])
    runs = [Background(runner, s) for s in [*specs, other]]
    for s in [*specs, other]:
        wait_for(lambda s=s: started(s), what="the units to start")
    assert runner.pause("shared-attempt")
    assert docker_state(docker_client, "shared-attempt") == ["paused"] * containers
    assert docker_state(docker_client, other.attempt) == ["running"], "another attempt goes on"
    assert runner.resume("shared-attempt")
    assert docker_state(docker_client, "shared-attempt") == ["running"] * containers
    for s in [*specs, other]:
        (Path(s.input_dir) / "go").touch()
    assert all(r.join().error is None for r in runs)
