"""Fixtures shared by the tests: real masters (tests/masters.py) and the local Docker engine."""

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from masters import MasterFactory, MasterProcess, Masters
from needs import skip_or_fail

from dockercomp.client import images


@pytest.fixture
def master_factory(tmp_path: Path) -> Iterator[MasterFactory]:
    """Start masters with extra flags: ``master_factory("--max-body", "2KiB")``."""
    masters = Masters(tmp_path)
    yield masters.start
    masters.close()


@pytest.fixture
def master(master_factory: MasterFactory) -> MasterProcess:
    """A master of its own for one test, with a quick reaper."""
    return master_factory("--reap-interval", "0.2")


@pytest.fixture(scope="module")
def shared_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """One master for a whole module, for tests that leave nothing behind that another could
    trip over (bad input, blobs by hash, tokens)."""
    masters = Masters(tmp_path_factory.mktemp("shared"))
    yield masters.start()
    masters.close()


# -- Docker ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local engine; start one with scripts/ensure-docker."""
    try:
        client = images.connect()
    except images.ImageError as exc:
        skip_or_fail(str(exc))
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> str:
    """The offline base image, built once per machine (cached after that)."""
    try:
        return images.ensure_base_image(docker_client)
    except images.ImageError as exc:
        skip_or_fail(f"cannot build the base image: {exc}")
