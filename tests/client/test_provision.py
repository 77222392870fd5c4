"""The volunteer's checks before a grant runs (client/provision.py), one rule per test: its
own limits, images by id only, signatures by trusted keys, allow_images, registries. The
master is a stub answering image records; fetching into a real engine is tested end to end
(tests/e2e/test_image_delivery.py)."""

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dockercomp.client.errors import ClientError
from dockercomp.client.provision import Provisioner
from dockercomp.client.settings import ClientSettings
from dockercomp.protocol import signing
from dockercomp.protocol.images import ImageInfo, LayerInfo, SignatureInfo
from dockercomp.protocol.messages import ErrorKind, Grant

IMAGE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


class StubMaster:
    """Answers GET /images/ID with the records it was given; counts the calls."""

    def __init__(self, *infos: ImageInfo) -> None:
        self.infos = {info.id: info for info in infos}
        self.calls = 0

    def get(self, path: str, reply: type, **kw: Any) -> ImageInfo:
        self.calls += 1
        return self.infos[path.rsplit("/", 1)[1]]


def keys(tmp_path: Path, name: str) -> tuple[Any, str]:
    private = tmp_path / name
    signing.keygen(str(private), f"{private}.pub")
    return signing.load_private(str(private)), f"{private}.pub"


def info(image_id: str = IMAGE, *signers: Any, tags: tuple[str, ...] = ("dockercomp/wordfreq:latest",)) -> ImageInfo:
    signed = [signing.sign(key, image_id) for key in signers]
    return ImageInfo(
        id=image_id, config="0" * 32, config_size=10, layers=[LayerInfo("sha256:" + "1" * 64, 5, ["0" * 32])],
        tags=list(tags), signatures=[SignatureInfo(s.key, s.public_key, s.signature) for s in signed],
    )  # fmt: skip


def grant(**fields: Any) -> Grant:
    base = Grant(
        attempt="a1", job="j", unit="j.0", kind="map", image=IMAGE, command=["run"], env={}, cpus=1.0,
        memory=256 << 20, timeout=60.0, deadline=0.0, inputs=[],
    )  # fmt: skip
    return replace(base, **fields)


def provisioner(tmp_path: Path, master: StubMaster, **settings: Any) -> Provisioner:
    values = {"memory": "1GiB", "slots": 2} | settings
    return Provisioner(ClientSettings(**values), master, None, str(tmp_path), 2, 1 << 30)  # type: ignore[arg-type]


def outcome(p: Provisioner, g: Grant) -> tuple[ErrorKind | None, str]:
    result = p.prepare(g, threading.Event())
    return (None, "") if result is None else (result.error, result.stderr_tail)


def test_an_image_signed_by_a_trusted_key_may_run(tmp_path: Path) -> None:
    project, public = keys(tmp_path, "project")
    master = StubMaster(info(IMAGE, project))
    p = provisioner(tmp_path, master, trust=public)
    assert outcome(p, grant()) == (None, "")
    assert outcome(p, grant(attempt="a2")) == (None, "")
    assert master.calls == 1  # the record is checked once per image


def test_unsigned_and_foreign_signatures_are_refused(tmp_path: Path) -> None:
    _, public = keys(tmp_path, "project")
    stranger, _ = keys(tmp_path, "stranger")
    master = StubMaster(info(IMAGE), info(OTHER, stranger))
    p = provisioner(tmp_path, master, trust=public)
    kind, why = outcome(p, grant())
    assert kind == ErrorKind.UNTRUSTED and "not signed" in why
    kind, why = outcome(p, grant(image=OTHER))
    assert kind == ErrorKind.UNTRUSTED and "does not trust" in why


def test_a_signature_that_claims_a_trusted_key_is_checked_with_that_key(tmp_path: Path) -> None:
    """A master that copies the project key's fingerprint onto its own signature gains nothing:
    the signature is verified with the trusted key itself."""
    project, public = keys(tmp_path, "project")
    forger, _ = keys(tmp_path, "forger")
    forged = signing.sign(forger, IMAGE)
    claimed = SignatureInfo(signing.fingerprint(project.public_key()), forged.public_key, forged.signature)
    record = replace(info(IMAGE), signatures=[claimed])
    kind, _ = outcome(provisioner(tmp_path, StubMaster(record), trust=public), grant())
    assert kind == ErrorKind.UNTRUSTED
    # the signature of another image id does not carry over either
    moved = replace(info(OTHER, project), id=IMAGE)
    assert outcome(provisioner(tmp_path, StubMaster(moved), trust=public), grant())[0] == ErrorKind.UNTRUSTED


def test_a_record_for_another_image_is_an_integrity_failure(tmp_path: Path) -> None:
    project, public = keys(tmp_path, "project")
    master = StubMaster(info(OTHER, project))
    master.infos[IMAGE] = master.infos[OTHER]
    assert outcome(provisioner(tmp_path, master, trust=public), grant())[0] == ErrorKind.INTEGRITY


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"cpus": 3.0}, "asks 3 cpus; this volunteer donated 2"),
        ({"memory": 2 << 30}, "asks 2.0GiB of memory; this volunteer donated 1.0GiB"),
        ({"timeout": 3 * 86400.0}, "at most 86400s"),
        ({"gpus": 1}, "asks 1 GPUs; this volunteer donated 0"),
        ({"image": "dockercomp/wordfreq:latest"}, "not an image id"),
        ({"image": "busybox@sha256:" + "0" * 64}, "does not pull from registries"),
    ],
)
def test_what_the_volunteer_did_not_agree_to_is_refused(tmp_path: Path, fields: dict[str, Any], fragment: str) -> None:
    project, public = keys(tmp_path, "project")
    master = StubMaster(info(IMAGE, project))
    kind, why = outcome(provisioner(tmp_path, master, trust=public), grant(**fields))
    assert kind == ErrorKind.REFUSED and fragment in why
    assert master.calls == 0  # refused before anything was asked of the master


def test_allow_images_narrows_by_tag(tmp_path: Path) -> None:
    project, public = keys(tmp_path, "project")
    master = StubMaster(info(IMAGE, project), info(OTHER, project, tags=("someone/miner:latest",)))
    p = provisioner(tmp_path, master, trust=public, allow_images="dockercomp/*")
    assert outcome(p, grant()) == (None, "")
    kind, why = outcome(p, grant(image=OTHER))
    assert kind == ErrorKind.REFUSED and "allow_images" in why


def test_a_lab_may_allow_unsigned_images_and_registries(tmp_path: Path) -> None:
    p = provisioner(tmp_path, StubMaster(info(IMAGE)), allow_unsigned=True, allow_registries=True)
    assert outcome(p, grant()) == (None, "")
    assert outcome(p, grant(image="busybox@sha256:" + "0" * 64)) == (None, "")
    signed_only = provisioner(tmp_path, StubMaster(info(IMAGE)), allow_registries=True, trust=keys(tmp_path, "k")[1])
    assert outcome(signed_only, grant(image="busybox@sha256:" + "0" * 64))[0] == ErrorKind.UNTRUSTED


def test_a_daemon_needs_a_key_to_trust_or_leave_to_run_unsigned(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="--trust KEYFILE"):
        provisioner(tmp_path, StubMaster())
    (tmp_path / "garbage.pub").write_text("not a key")
    with pytest.raises(ClientError, match="no PEM public key"):
        provisioner(tmp_path, StubMaster(), trust=str(tmp_path / "garbage.pub"))
