"""Pushing images to a real master over HTTP, without Docker: layers are checked against
their digests, an image id against its config, signatures against their keys; every bad push
is refused with what to fix and registers nothing. Jobs name pushed images only."""

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from dockercomp.protocol import signing
from dockercomp.protocol.images import PIECE_SIZE
from dockercomp.protocol.integrity import digest
from tests.masters import push_stub_image
from tests.sim import job_file, put_blob

from .helpers import assert_error


def layer_bytes(content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("file")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def config_for(*layers: bytes) -> bytes:
    return json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}}).encode()


class Pusher:
    def __init__(self, master: Any, token: str | None = None) -> None:
        self.master = master
        self.headers = {"Authorization": f"Bearer {token}"} if token else master.headers

    def blob(self, data: bytes) -> str:
        blob = digest(data)
        response = requests.put(f"{self.master.api}/blobs/{blob}", data=data, headers=self.headers, timeout=10)
        assert response.status_code == 201, response.text
        return blob

    def layer(self, digest_: str, body: Any) -> requests.Response:
        return requests.put(f"{self.master.api}/layers/{digest_}", json=body, headers=self.headers, timeout=30)

    def image(self, body: Any) -> requests.Response:
        return requests.post(f"{self.master.api}/images", json=body, headers=self.headers, timeout=10)

    def images(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.master.api}/images", headers=self.headers, timeout=10).json()["images"]

    def push_layer(self, data: bytes) -> str:
        pieces = [self.blob(data[i : i + PIECE_SIZE]) for i in range(0, len(data), PIECE_SIZE)]
        response = self.layer(sha(data), {"size": len(data), "pieces": pieces})
        assert response.status_code == 201, response.text
        return sha(data)


def test_a_layer_is_recorded_only_when_its_pieces_hash_to_its_digest(master: Any) -> None:
    push = Pusher(master)
    data = layer_bytes(b"x" * (PIECE_SIZE + 1000))  # two pieces
    first, second = data[:PIECE_SIZE], data[PIECE_SIZE:]
    pieces = [push.blob(first), push.blob(second)]
    assert_error(push.layer(sha(data), {"size": len(data), "pieces": pieces[::-1]}), 422, "pieces in order hashes to")
    assert_error(push.layer(sha(data), {"size": len(data), "pieces": pieces[:1]}), 400, "bytes, not the")  # truncated
    assert_error(push.layer(sha(data), {"size": len(data), "pieces": [pieces[0], "0" * 32]}), 400, "not uploaded")
    assert_error(push.layer("sha256:abc", {"size": 1, "pieces": pieces}), 400, "64 lowercase hex")
    assert_error(push.layer(sha(data), {"size": len(data)}), 400, "pieces")
    missing = requests.get(f"{master.api}/layers/{sha(data)}", headers=master.headers, timeout=10)
    assert_error(missing, 404, "push it")  # nothing was recorded
    assert push.layer(sha(data), {"size": len(data), "pieces": pieces}).status_code == 201
    found = requests.get(f"{master.api}/layers/{sha(data)}", headers=master.headers, timeout=10).json()
    assert found == {"digest": sha(data), "size": len(data), "pieces": pieces}


def test_an_image_is_registered_from_its_config_and_its_pushed_layers(master: Any) -> None:
    push = Pusher(master)
    base, top = layer_bytes(b"base"), layer_bytes(b"top")
    config = config_for(base, top)
    before = push.images()
    push.push_layer(base)
    body = {"config": push.blob(config), "tags": ["lab/tool:1"]}
    assert_error(push.image(body), 400, "not pushed", sha(top))  # a layer is missing
    push.push_layer(top)
    assert_error(
        push.image(body | {"id": "sha256:" + "0" * 64}), 422, "config (whose sha256 is the image id)"
    )  # a lying id
    assert_error(push.image(body | {"tags": ["Not A Tag"]}), 400, "not an image tag")
    assert_error(push.image({"config": push.blob(b"{}")}), 400, "not a Docker image config")
    assert_error(push.image({"config": "0" * 32}), 400, "was not uploaded")
    assert push.images() == before  # nothing registered by any of those
    reply = push.image(body | {"id": sha(config)})
    assert reply.status_code == 201, reply.text
    record = reply.json()
    assert record["id"] == sha(config) and record["tags"] == ["lab/tool:1"] and record["signatures"] == []
    assert [layer["digest"] for layer in record["layers"]] == [sha(base), sha(top)]
    by_tag = requests.get(f"{master.api}/images/lab/tool:1", headers=master.headers, timeout=10).json()
    assert by_tag["id"] == sha(config)


def test_a_tag_belongs_to_whoever_pushed_it_first(master: Any) -> None:
    alice, bob = Pusher(master, master.key("scientist", "alice")), Pusher(master, master.key("scientist", "bob"))
    assert alice.push_layer(layer_bytes(b"alice's")) == sha(layer_bytes(b"alice's"))
    config = config_for(layer_bytes(b"alice's"))
    assert alice.image({"config": alice.blob(config), "tags": ["alice/tool"]}).status_code == 201
    bob.push_layer(layer_bytes(b"bob's"))
    hijack = bob.image({"config": bob.blob(config_for(layer_bytes(b"bob's"))), "tags": ["alice/tool:latest"]})
    assert_error(hijack, 409, "belongs to alice")
    resolved = requests.get(f"{master.api}/images/alice/tool", headers=master.headers, timeout=10).json()
    assert resolved["id"] == sha(config) and resolved["owner"] == "alice"


def test_signatures_are_checked_and_the_signer_is_published(master: Any, tmp_path: Path) -> None:
    image = push_stub_image(master, "lab/signed:latest")
    key_file = tmp_path / "project.key"
    fingerprint = signing.keygen(str(key_file), f"{key_file}.pub")
    good = signing.sign(signing.load_private(str(key_file)), image)
    url = f"{master.api}/images/{image}/signatures"
    bad = {"key": good.key, "public_key": good.public_key, "signature": "00" * 64}
    assert_error(requests.post(url, json=bad, headers=master.headers, timeout=10), 400, "does not hold")
    other = signing.sign(signing.load_private(str(key_file)), "sha256:" + "1" * 64)
    moved = {"key": other.key, "public_key": other.public_key, "signature": other.signature}
    assert_error(requests.post(url, json=moved, headers=master.headers, timeout=10), 400, "does not hold")
    lying = {"key": "a" * 64, "public_key": good.public_key, "signature": good.signature}
    assert_error(requests.post(url, json=lying, headers=master.headers, timeout=10), 400, "fingerprint")
    body = {"key": good.key, "public_key": good.public_key, "signature": good.signature}
    assert requests.post(url, json=body, headers=master.headers, timeout=10).status_code == 201
    record = requests.get(f"{master.api}/images/{image}", headers=master.headers, timeout=10).json()
    assert [s["key"] for s in record["signatures"]] == [fingerprint]
    pem = requests.get(f"{master.api}/signers/{fingerprint}", timeout=10)  # anyone: the installer pins it
    assert pem.status_code == 200 and pem.content == Path(f"{key_file}.pub").read_bytes()
    assert_error(requests.get(f"{master.api}/signers/{'0' * 64}", timeout=10), 404, "signed by")


@pytest.mark.parametrize("image", ["dockercomp/unknown", "sha256:" + "9" * 64])
def test_a_job_must_name_a_pushed_image(master: Any, image: str) -> None:
    blob = put_blob(master.url, b"input\n")
    body = {"job": job_file(image=image), "chunks": [blob]}
    response = requests.post(f"{master.api}/jobs", json=body, headers=master.headers, timeout=10)
    assert_error(response, 400, "push it first", "dockercomp images push")


def test_a_job_runs_its_image_by_id(master: Any) -> None:
    image = push_stub_image(master, "lab/byid:latest")
    blob = put_blob(master.url, b"input\n")
    for ref in ("lab/byid", "lab/byid:latest", image):
        response = requests.post(
            f"{master.api}/jobs",
            json={"job": job_file(image=ref), "chunks": [blob]},
            headers=master.headers,
            timeout=10,
        )
        assert response.status_code == 201, response.text
        assert response.json()["image"] == image
        job = requests.get(f"{master.api}/jobs/{response.json()['job']}", headers=master.headers, timeout=10).json()
        assert job["image"] == image
