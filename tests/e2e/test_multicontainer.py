"""Multi-container units end to end: a real master, a real daemon process, real containers. A
job's unit is a key-value service (a sidecar with an image of its own) and the job's main
container, which knows the service only by its name: it stores its chunk's pairs there, reads
them back with a value the service was seeded with, and writes the answers as its result.
Both images are pushed to the master and signed; the volunteer fetches, checks and runs both,
and leaves no container and no network behind."""

import io
import tarfile
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import requests

from dockercomp.client import images
from dockercomp.client.runner import LABEL_CLIENT
from dockercomp.scientist import Master
from tests import kv

from .cluster import Daemons, job_units, publish, submit, wait_job

pytestmark = pytest.mark.slow
JOB_WAIT = 120.0
KV_TAG = "dockercomp/test-kv-service:latest"
QUERY_TAG = "dockercomp/test-kv-query:latest"


def build(docker_client: docker.DockerClient, tag: str, script: bytes) -> None:
    """An image FROM the base with one script of its own, /app/run.py, as its command."""
    images.ensure_base_image(docker_client)
    dockerfile = f'FROM {images.BASE_IMAGE}\nCOPY run.py /app/run.py\nCMD ["python3", "/app/run.py"]\n'.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("run.py", script)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)


@pytest.fixture(scope="module")
def kv_images(docker_client: docker.DockerClient) -> Iterator[None]:
    """The service's and the querying main container's images, built for this module."""
    build(docker_client, KV_TAG, kv.SERVICE.encode())
    build(docker_client, QUERY_TAG, kv.QUERY.encode())
    yield
    for tag in (KV_TAG, QUERY_TAG):
        docker_client.images.remove(tag, force=True)


def kv_job(sidecar_image: str = KV_TAG) -> dict[str, Any]:
    return {
        "name": "kv-lookup",
        "image": QUERY_TAG,
        "env": {"KV_HOST": "kv"},
        "containers": [
            {"name": "main", "main": True},
            {"name": "kv", "image": sidecar_image, "env": {"KV_SEED": "answer=42"}},
        ],
        "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 1},
        "resources": {"cpus": 1, "memory": "64MiB", "timeout": "60s"},
    }


def test_a_key_value_service_and_its_client_finish_as_one_unit(
    master: Any, daemons: Daemons, docker_client: docker.DockerClient, kv_images: None
) -> None:
    kv_id = publish(master, KV_TAG)
    volunteer = daemons.start(master, "kv-volunteer", slots=2)  # two cpus: room for one unit's two containers
    job_id, _ = submit(master, kv_job(), [b"colour blue\nshape round\n", b"size large\n"])

    status = wait_job(master, job_id, JOB_WAIT)
    assert status["state"] == "done", [u["attempts"] for u in job_units(master, job_id)]
    output = b"".join(Master(master.url, token=master.token).results(job_id))
    assert output == b"colour=blue\nshape=round\nanswer=42\nsize=large\nanswer=42\n"

    log = volunteer.log()
    assert "network" in log and " (kv) started (" in log and kv_id in log  # the sidecar ran from its pushed id
    leftovers = docker_client.api.networks(filters={"label": f"{LABEL_CLIENT}={volunteer.client}"})
    assert leftovers == []  # (containers: the daemons fixture checks)


def test_a_sidecar_image_that_is_not_pushed_is_refused_at_submit_by_name(master: Any, kv_images: None) -> None:
    publish(master, QUERY_TAG)
    body = {"job": kv_job("dockercomp/never-pushed"), "chunks": []}
    response = requests.post(f"{master.api}/jobs", json=body, headers=master.headers, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("container kv: no image 'dockercomp/never-pushed' on this master")
