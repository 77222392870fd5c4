"""Workload images delivered by the master, end to end: real master, real daemons, real
engines. A volunteer whose engine is empty gets a pushed image from the master alone (no
registry), a second image on the same base costs only its own layers, and an image that is
tampered with, unsigned or signed by a key the volunteer does not trust is refused before
any container starts."""

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockercomp.client import images
from dockercomp.protocol import signing
from dockercomp.scientist import Master

from .cluster import Daemons, job_units, publish, submit, wait_for, wait_job

pytestmark = pytest.mark.slow
JOB_WAIT = 120.0
# sh and cat are in the debootstrap base: the unit's output is its chunk and the image's own file
COMMAND = ["sh", "-c", "cat /input/chunk /marker.txt > /output/result"]


def build(docker_client: docker.DockerClient, tag: str, marker: bytes) -> str:
    """An image FROM the base with one file of its own: one layer on top of the base's."""
    images.ensure_base_image(docker_client)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {images.BASE_IMAGE}\nCOPY marker.txt /marker.txt\n".encode()),
                           ("marker.txt", marker)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    return image.id


@pytest.fixture(scope="module")
def two_images(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """Two tags of images on the same base, built for this module and removed after it."""
    tags = ("dockercomp/test-deliver-a:latest", "dockercomp/test-deliver-b:latest")
    for tag, marker in zip(tags, (b"image a\n", b"image b\n"), strict=True):
        build(docker_client, tag, marker)
    yield tags
    for tag in tags:
        docker_client.images.remove(tag, force=True)


def job(image: str, **fields: Any) -> dict[str, Any]:
    return {"name": "deliver", "image": image, "command": COMMAND,
            "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 1},
            "resources": {"cpus": 1, "memory": "64MiB", "timeout": "60s"}, **fields}  # fmt: skip


def received(daemon: Any) -> int:
    return int(daemon.status().get("image_bytes") or 0)


def output_of(master: Any, job_id: str) -> bytes:
    scientist = Master(master.url, token=master.token)
    return b"".join(scientist.results(job_id))


def test_an_empty_engine_gets_images_from_the_master_and_shares_their_base(
    empty_engine_url: str,
    master: Any,
    daemons: Daemons,
    docker_client: docker.DockerClient,
    two_images: tuple[str, str],
) -> None:
    first, second = two_images
    first_id, second_id = publish(master, first), publish(master, second)
    scientist = Master(master.url, token=master.token)
    records = [scientist.image(ref) for ref in (first_id, second_id)]
    layers = {layer["digest"]: layer["size"] for record in records for layer in record["layers"]}
    assert records[0]["layers"][0] == records[1]["layers"][0] and len(records[1]["layers"]) == 2  # one base

    volunteer = daemons.start(master, "empty-one", slots=1, docker_host=empty_engine_url)
    job_a, _ = submit(master, job(first), [b"chunk of a\n"])
    assert wait_job(master, job_a, JOB_WAIT)["state"] == "done"
    assert output_of(master, job_a) == b"chunk of a\nimage a\n"
    after_first = received(volunteer)
    assert after_first == sum(layers[d["digest"]] for d in records[0]["layers"]) + records[0]["config_size"]

    job_b, _ = submit(master, job(second), [b"chunk of b\n"])
    assert wait_job(master, job_b, JOB_WAIT)["state"] == "done"
    assert output_of(master, job_b) == b"chunk of b\nimage b\n"
    own = records[1]["layers"][1]["size"] + records[1]["config_size"]
    assert received(volunteer) - after_first == own  # only its own layer and config
    assert own < 64 << 10 < records[1]["layers"][0]["size"]

    engine = docker.DockerClient(base_url=empty_engine_url)
    try:
        held = engine.api.images(all=True)
        assert {i["Id"] for i in held} == {first_id, second_id}
        named = [n for i in held for n in (i.get("RepoDigests") or []) + (i.get("RepoTags") or []) if "<none>" not in n]
        assert named == []  # nothing pulled from a registry, nothing tagged: volunteers run by id
    finally:
        engine.close()
    assert "container" in volunteer.log() and "pull" not in volunteer.log().lower()


def failed_attempt(master: Any, job_id: str) -> dict[str, Any]:
    assert wait_job(master, job_id, JOB_WAIT)["state"] == "failed"
    (unit,) = job_units(master, job_id)
    (attempt,) = unit["attempts"]
    return attempt


def assert_nothing_ran(daemon: Any, engine: docker.DockerClient) -> None:
    assert " started (" not in daemon.log(), "a container was started"
    assert engine.api.containers(all=True, filters={"label": f"dockercomp.client={daemon.client}"}) == []


def test_a_tampered_layer_is_refused_and_nothing_runs(
    empty_engine_url: str,
    master: Any,
    daemons: Daemons,
    two_images: tuple[str, str],
) -> None:
    image_id = publish(master, two_images[0])
    base = Master(master.url, token=master.token).image(image_id)["layers"][0]
    piece = base["pieces"][0]
    path = master.data_dir / "blobs" / piece[:2] / piece[2:4] / piece  # pieces of 8 MiB are files
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))

    volunteer = daemons.start(master, "empty-two", slots=1, docker_host=empty_engine_url)
    job_id, _ = submit(master, job(two_images[0]), [b"x\n"])
    attempt = failed_attempt(master, job_id)
    assert attempt["error"] == "integrity", attempt
    assert piece in attempt["stderr_tail"]
    engine = docker.DockerClient(base_url=empty_engine_url)
    try:
        assert_nothing_ran(volunteer, engine)
        assert engine.api.images(all=True) == []  # nothing was loaded
    finally:
        engine.close()


def test_unsigned_and_foreign_signed_images_are_refused_and_nothing_runs(
    master: Any, daemons: Daemons, docker_client: docker.DockerClient, two_images: tuple[str, str], tmp_path: Path
) -> None:
    unsigned, foreign = two_images
    publish(master, unsigned, sign=False)
    foreign_id = publish(master, foreign, sign=False)
    stranger = tmp_path / "stranger.key"
    signing.keygen(str(stranger), f"{stranger}.pub")
    scientist = Master(master.url, token=master.token)
    scientist.add_signature(foreign_id, signing.sign(signing.load_private(str(stranger)), foreign_id))

    volunteer = daemons.start(master, "careful", slots=1)  # trusts only the tests' project key
    for image, fragment in ((unsigned, "is not signed"), (foreign, "does not trust")):
        job_id, _ = submit(master, job(image), [b"x\n"])
        attempt = failed_attempt(master, job_id)
        assert attempt["error"] == "untrusted" and fragment in attempt["stderr_tail"], attempt
    wait_for(lambda: volunteer.status().get("counts"), 10, "the daemon to count its attempts")
    assert_nothing_ran(volunteer, docker_client)
