"""Fixtures for the client's tests. Docker-backed ones skip on a machine without an engine,
but FAIL when the CI environment variable is set, so a green CI means they really ran."""

import os
from collections.abc import Iterator
from typing import NoReturn

import docker
import pytest

from dockercomp.client import images


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


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


@pytest.fixture(scope="session")
def wordfreq_image(docker_client: docker.DockerClient, base_image: str) -> str:
    return images.build_workload(docker_client, "wordfreq")
