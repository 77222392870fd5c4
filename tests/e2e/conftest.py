"""Fixtures for the end-to-end tests: a real master process, real client daemon processes and
real containers of the local Docker engine.

Without an engine these tests skip on a laptop but FAIL when the CI environment variable is
set, so a green CI means they really ran. After the whole session no container labelled
``dockercomp.client`` may be left, running or not.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from cluster import STARTED_CLIENTS, Daemons, describe, labelled_containers, remove_container
from needs import skip_or_fail

from dockercomp.client import images
from dockercomp.client.runner import LABEL_CLIENT

WORKLOADS = Path(__file__).parent / "workloads"
PROBE = "e2e-probe"
LEFTOVER_GRACE = 10.0  # seconds a container of another session running at the same time gets to go
# A master that answers within a second: clients heartbeat (and ask again for work) every
# 0.3s, a client silent for 4s loses its leases, a lease lives 5s past its unit's timeout.
MASTER_CONFIG = "[server]\nheartbeat_interval = 0.3\n"
MASTER_FLAGS = ("--reap-interval", "0.2", "--heartbeat-timeout", "4", "--lease-slack", "5")


@pytest.fixture(scope="session", autouse=True)
def no_container_left_behind(docker_client: docker.DockerClient) -> Iterator[None]:
    """After every test of the session: ``docker ps -a --filter label=dockercomp.client`` is
    empty. A container of another test session running on this engine at the same moment
    is given a few seconds to go; one this session's daemons left is removed, then reported."""
    yield

    deadline = time.monotonic() + LEFTOVER_GRACE
    left = labelled_containers(docker_client)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = labelled_containers(docker_client)
    for container in left:
        if (container.get("Labels") or {}).get(LABEL_CLIENT) in STARTED_CLIENTS:
            remove_container(docker_client, container)
    assert not left, f"containers left behind after the tests: {describe(left)}"


@pytest.fixture(scope="session")
def wordfreq_image(docker_client: docker.DockerClient) -> str:
    """The wordfreq workload, built offline (the base image first when it is missing)."""
    try:
        return images.build_workload(docker_client, "wordfreq")
    except images.ImageError as exc:
        skip_or_fail(f"cannot build the wordfreq image: {exc}")


@pytest.fixture(scope="session")
def probe_image(docker_client: docker.DockerClient, wordfreq_image: str) -> str:
    """The tests' own workload (workloads/e2e-probe): a unit's chunk says whether it echoes,
    sleeps, exits non-zero, runs out of memory or hangs. Built like any workload, so it
    carries the ``dockercomp.image=workload`` label."""
    return images.build_workload(docker_client, PROBE, root=WORKLOADS)


@pytest.fixture
def master(master_factory: Any, tmp_path: Path) -> Any:
    """A master of its own for one test, quick to notice silent clients and expired leases."""
    config = tmp_path / "master.toml"
    config.write_text(MASTER_CONFIG)
    return master_factory(*MASTER_FLAGS, "--config", str(config))


@pytest.fixture
def daemons(master_factory: Any, tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Daemons]:
    """Start client daemons: ``daemons.start(master, "name", slots=2)``. At the end those still
    running get SIGTERM and must exit 0, without a traceback and without leaving a container.
    (It asks for master_factory so that the daemons stop before their master does.)"""
    (tmp_path / "daemons").mkdir()
    started = Daemons(tmp_path / "daemons", docker_client)
    yield started
    started.close()
