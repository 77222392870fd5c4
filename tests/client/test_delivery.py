"""Images moved as verified layers: exported from the main engine, loaded into an empty second
engine (tests/engines.py) the way a volunteer that has nothing gets them. Real Docker, no mocks;
only the archive parser's path checks use hand-made tars, since docker save never writes those."""

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from dockercomp.client import delivery
from dockercomp.client.delivery import DeliveryError, ExportedImage


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes())


@pytest.fixture(scope="module")
def test_images(
    docker_client: docker.DockerClient, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Two images on the same base, one small layer each of their own: tag by name."""
    tags = {}
    for name in ("a", "b"):
        context = tmp_path_factory.mktemp(f"context-{name}")
        (context / f"{name}.txt").write_text(f"image {name}, made by {os.getpid()}\n")
        (context / "Dockerfile").write_text(f"FROM {base_image}\nCOPY {name}.txt /{name}.txt\n")
        tag = f"dockercomp/delivery-test:{name}-{os.getpid()}"
        docker_client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
        tags[name] = tag
    yield tags
    for tag in tags.values():
        docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def exported(
    docker_client: docker.DockerClient, test_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ExportedImage]:
    workdir = tmp_path_factory.mktemp("exported")
    return {name: delivery.export_image(docker_client, tag, workdir) for name, tag in test_images.items()}


@pytest.fixture
def engine(empty_engine_url: str) -> Iterator[docker.DockerClient]:
    """A client of an empty engine of its own: a volunteer that holds no image yet."""
    client = docker.DockerClient(base_url=empty_engine_url)
    yield client
    client.close()


def test_export_checks_out(
    docker_client: docker.DockerClient, base_image: str, test_images: dict[str, str], exported: dict, tmp_path: Path
) -> None:
    a = exported["a"]
    assert a.id == docker_client.images.get(test_images["a"]).id == sha256(a.config)
    assert test_images["a"] in a.tags
    assert [layer.digest for layer in a.layers] == json.loads(a.config)["rootfs"]["diff_ids"]
    for layer in a.layers:
        assert file_sha256(layer.path) == layer.digest and layer.path.stat().st_size == layer.size
    assert not [p for p in a.layers[0].path.parent.iterdir() if p.name.endswith(".part")]

    base = delivery.export_image(docker_client, base_image, tmp_path)
    assert len(base.layers) == 1 < len(a.layers) == 2
    assert base.layers[0].digest == a.layers[0].digest == exported["b"].layers[0].digest
    assert base.layers[0].size > 100 * a.layers[1].size  # the base is what must not travel twice


def test_export_of_no_image(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as caught:
        delivery.export_image(docker_client, "dockercomp/no-such-image:never", tmp_path)
    assert caught.value.kind == "bad_image"


def test_chain_ids_are_the_engines(docker_client: docker.DockerClient, exported: dict) -> None:
    diff_ids = [layer.digest for layer in exported["a"].layers]
    chains = delivery.chain_ids(diff_ids)
    assert chains[0] == diff_ids[0]
    assert chains[1] == sha256(f"{diff_ids[0]} {diff_ids[1]}".encode())
    assert set(chains) <= delivery.present_layers(docker_client)
    # The engine keeps each layer in its layer store under its chain id, with the diff id inside.
    layerdb = Path(docker_client.info()["DockerRootDir"], "image", "overlay2", "layerdb", "sha256")
    if not os.access(layerdb, os.R_OK):
        pytest.skip(f"cannot read the engine's layer store {layerdb}")
    for chain, diff in zip(chains, diff_ids, strict=True):
        assert (layerdb / chain.removeprefix("sha256:") / "diff").read_text() == diff


def test_second_image_loads_only_its_own_layer(exported: dict, engine: docker.DockerClient, tmp_path: Path) -> None:
    a, b = exported["a"], exported["b"]
    work = tmp_path / "work"
    assert delivery.present_layers(engine) == set()
    assert delivery.missing_layers(engine, [x.digest for x in a.layers]) == [0, 1]
    delivery.load_image(engine, a.id, a.config, {i: x.path for i, x in enumerate(a.layers)}, work)
    assert engine.images.get(a.id).id == a.id
    assert engine.images.get(a.id).tags == []  # run by id only

    missing = delivery.missing_layers(engine, [x.digest for x in b.layers])
    assert missing == [1]
    files = {i: b.layers[i].path for i in missing}
    given = sum(path.stat().st_size for path in files.values())
    delivery.load_image(engine, b.id, b.config, files, work)
    assert engine.images.get(b.id).id == b.id
    assert given == b.layers[1].size < b.layers[0].size // 100
    assert {image.id for image in engine.images.list()} == {a.id, b.id}
    # B runs on the base layer that came with A: the layer it did not send is the right one.
    command = ["python3", "-c", "print(open('/b.txt').read())"]  # python3 is the base's, /b.txt B's own
    out = engine.containers.run(b.id, command, entrypoint=[], network_mode="none", remove=True)
    assert out.startswith(b"image b")
    assert not list(work.iterdir())  # the load archives are gone


def test_tampering_loads_nothing(exported: dict, engine: docker.DockerClient, tmp_path: Path) -> None:
    a = exported["a"]
    files = {i: x.path for i, x in enumerate(a.layers)}
    tampered = tmp_path / "tampered.tar"
    data = bytearray(a.layers[1].path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    work = tmp_path / "work"
    for config, given in [
        (a.config, {**files, 1: tampered}),  # one byte flipped in a layer
        (a.config.replace(b"{", b"{ ", 1), files),  # a config that is not the one the id names
        (a.config, {1: files[1]}),  # a layer the engine lacks and no file for it
    ]:
        with pytest.raises(DeliveryError) as caught:
            delivery.load_image(engine, a.id, config, given, work)
        assert caught.value.kind == "integrity", caught.value
        assert engine.images.list(all=True) == []
        assert delivery.present_layers(engine) == set()


def test_an_engine_that_does_not_answer(exported: dict, tmp_path: Path) -> None:
    gone = docker.DockerClient(base_url=f"unix://{tmp_path}/no.sock", version="1.41")
    a = exported["a"]
    with pytest.raises(DeliveryError) as caught:
        delivery.load_image(gone, a.id, a.config, {i: x.path for i, x in enumerate(a.layers)}, tmp_path)
    assert caught.value.kind == "docker" and "dockerd" in str(caught.value)


# -- the archive parser on hand-made tars --------------------------------------------------------

LAYER = b"not really a tar, but bytes with a digest" * 100


def save_tar(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar of (name, bytes) files and (name, "->target") symlinks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def hand_made(layer_names: list[str], extra: list[tuple[str, bytes | str]], config_name: str = "c.json"):
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(LAYER)] * len(layer_names)}}).encode()
    manifest = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": layer_names}]).encode()
    members = [("c.json", config), ("l1/layer.tar", LAYER), *extra, ("manifest.json", manifest)]
    return save_tar(members), sha256(config)


def parse(archive: bytes, image_id: str, workdir: Path):
    return delivery._parse_save(iter([archive[:1000], archive[1000:]]), image_id, workdir)


def test_parser_reads_a_save_with_a_repeated_layer(tmp_path: Path) -> None:
    # Legacy saves link a layer that appears twice to its first copy.
    archive, image_id = hand_made(["l1/layer.tar", "l2/layer.tar"], [("l2/layer.tar", "->../l1/layer.tar")])
    _, layers = parse(archive, image_id, tmp_path / "w")
    assert layers[0].path == layers[1].path and layers[0].path.read_bytes() == LAYER
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [layers[0].path.name]


def test_parser_takes_a_gzipped_layer(tmp_path: Path) -> None:
    archive, image_id = hand_made(["l2.gz"], [("l2.gz", gzip.compress(LAYER))])
    _, layers = parse(archive, image_id, tmp_path)
    assert layers[0].path.read_bytes() == LAYER and layers[0].size == len(LAYER)


@pytest.mark.parametrize(
    ("layer_names", "extra", "config_name", "kind"),
    [
        (["../x"], [], "c.json", "bad_image"),
        (["/etc/passwd"], [], "c.json", "bad_image"),
        (["l1/layer.tar"], [], "../c.json", "bad_image"),
        (["l1/layer.tar"], [("/etc/evil", b"x")], "c.json", "bad_image"),
        (["l1/../../x"], [("../x", b"x")], "c.json", "bad_image"),
        (["l2/layer.tar"], [("l2/layer.tar", "->../../etc/passwd")], "c.json", "bad_image"),
        (["l2/layer.tar"], [("l2/layer.tar", "->/etc/passwd")], "c.json", "bad_image"),
        (["l2/layer.tar"], [("l2/layer.tar", b"other bytes")], "c.json", "integrity"),
        (["nowhere/layer.tar"], [], "c.json", "bad_image"),
        (["l1/layer.tar"], [("c.json", b"{}")], "c.json", "bad_image"),  # a second config
    ],
)
def test_parser_rejects(layer_names: list, extra: list, config_name: str, kind: str, tmp_path: Path) -> None:
    archive, image_id = hand_made(layer_names, extra, config_name)
    with pytest.raises(DeliveryError) as caught:
        parse(archive, image_id, tmp_path / "w")
    assert caught.value.kind == kind, caught.value
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing left behind


def test_parser_rejects_a_config_of_another_image(tmp_path: Path) -> None:
    archive, _ = hand_made(["l1/layer.tar"], [])
    with pytest.raises(DeliveryError) as caught:
        parse(archive, sha256(b"another config"), tmp_path)
    assert caught.value.kind == "integrity"


def test_parser_rejects_what_is_not_a_save(tmp_path: Path) -> None:
    for archive in (b"this is not a tar at all" * 50, save_tar([("hello.txt", b"hi")])):
        with pytest.raises(DeliveryError) as caught:
            parse(archive, sha256(b"{}"), tmp_path)
        assert caught.value.kind == "bad_image"
