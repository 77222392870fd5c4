"""Docker images moved as content-addressed layers, without a registry.

The master keeps a pushed image as its config plus one blob per layer, each named by Docker's
own digest of the *uncompressed* layer tar (the config's ``rootfs.diff_ids``). That naming is
what lets a volunteer ask for only the layers its engine lacks, check every byte it got
against the config, and know the engine holds exactly the image a job names: the image id is
the sha256 of the config, and the config pins every layer. Nothing here trusts a tag.

Both ends use this module: the pushing side exports (``docker save``, parsed and verified);
the volunteer side works out which layers are missing (by ChainID, as the engine stores them)
and loads the image from the config and those layers alone (``docker load`` of a legacy
archive that names every layer but carries only the missing ones: the engine looks each
layer's ChainID up before it opens the layer's file).
"""

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import requests

from .errors import ClientError

log = logging.getLogger(__name__)

BLOCK = 1 << 20  # hashing and copying go in 1 MiB blocks: large layers never sit in memory


class DeliveryError(ClientError):
    """kind: "integrity" (bytes do not match their digest, or an id mismatch: download again),
    "docker" (the engine refused or failed: see the message), or "bad_image" (not a docker
    image, or a save this module cannot read safely)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ExportedLayer:
    digest: str  # "sha256:<64 hex>" == config rootfs.diff_ids[i]
    size: int
    path: Path  # a file holding the uncompressed layer tar


@dataclass(frozen=True)
class ExportedImage:
    id: str  # "sha256:<64 hex>" == sha256 of config bytes == docker's image id
    config: bytes  # the image config JSON, byte for byte as Docker has it
    layers: tuple[ExportedLayer, ...]  # in rootfs order
    tags: tuple[str, ...]  # RepoTags of the image, possibly empty


# -- export ------------------------------------------------------------------------------------


def export_image(client: docker.DockerClient, ref: str, workdir: Path) -> ExportedImage:
    """``docker save`` ``ref`` into ``workdir`` and verify it against its own digests.

    The save is parsed as it streams (each member copied once, hashed on the way), so neither
    the archive nor a layer is ever whole in memory or on disk twice. Only manifest.json is
    trusted for the layout, which reads both the legacy layout and the OCI one of Docker >= 25.
    Member names are checked and files are written under names of our own, so nothing in the
    archive can place a file outside ``workdir``."""
    with _docker_errors(f"save image {ref}", not_found="bad_image"):
        image = client.images.get(ref)
        # Saved by id: the engine's own bytes, whatever the tags (taken from the engine instead).
        config, layers = _parse_save(image.save(chunk_size=BLOCK), image.id, workdir)
    log.info("exported %s (%s): %d layers, %d bytes", ref, image.id, len(layers), sum(x.size for x in layers))
    return ExportedImage(id=image.id, config=config, layers=tuple(layers), tags=tuple(image.tags))


def _parse_save(chunks: Iterable[bytes], image_id: str, workdir: Path) -> tuple[bytes, list[ExportedLayer]]:
    blobs: dict[str, tuple[Path, str, int]] = {}  # archive name -> (our file, sha256 hex, size)
    links: dict[str, str] = {}  # archive name -> the name it links to
    kept: dict[str, tuple[Path, int]] = {}  # archive name -> (verified layer file, size)
    done = False
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _read_save(chunks, workdir, blobs, links)
        try:
            (entry,) = json.loads(blobs[_resolve(blobs, links, "manifest.json")][0].read_bytes())
            config_name = _resolve(blobs, links, entry["Config"])
            names = list(entry["Layers"])
        except (ValueError, TypeError, KeyError) as exc:
            raise DeliveryError("bad_image", f"manifest.json does not describe one image: {exc!r}") from exc
        config = blobs[config_name][0].read_bytes()
        if "sha256:" + blobs[config_name][1] != image_id:
            raise DeliveryError("integrity", f"the saved config does not hash to the image id {image_id}")
        diff_ids = _diff_ids(config)
        if len(names) != len(diff_ids):
            raise DeliveryError("bad_image", f"the save lists {len(names)} layers, its config {len(diff_ids)}")
        layers = []
        for name, digest in zip(names, diff_ids, strict=True):
            key = _resolve(blobs, links, name)
            if key not in kept:
                kept[key] = _layer_file(blobs[key], key, digest, workdir)
            layers.append(ExportedLayer(digest=digest, size=kept[key][1], path=kept[key][0]))
        done = True
        return config, layers
    finally:
        for path, _, _ in blobs.values():
            path.unlink(missing_ok=True)  # the layers were moved away from these names
        for path, _ in kept.values() if not done else ():
            path.unlink(missing_ok=True)


def _read_save(chunks: Iterable[bytes], workdir: Path, blobs: dict[str, Any], links: dict[str, str]) -> None:
    """Copy every file of the archive to ``workdir`` under a name of ours, hashing it; links
    are only noted (by name), never made."""
    try:
        with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tar:
            for member in tar:
                name = _safe_name(member.name)
                if name in blobs or name in links:  # else a later copy could stand in for a checked one
                    raise DeliveryError("bad_image", f"archive member {name} appears twice")
                if member.issym():
                    if member.linkname.startswith("/"):
                        raise DeliveryError("bad_image", f"archive link {name} points outside it")
                    links[name] = _safe_name(posixpath.join(posixpath.dirname(name), member.linkname))
                elif member.islnk():
                    links[name] = _safe_name(member.linkname)
                elif member.isreg():
                    source = tar.extractfile(member)
                    assert source is not None  # a regular member always has data
                    path = workdir / f".save-{len(blobs)}.part"
                    blobs[name] = (path, *_copy_hashed(source, path))
                elif not member.isdir():
                    raise DeliveryError("bad_image", f"archive member {name} is neither a file nor a directory")
    except (requests.exceptions.RequestException, docker.errors.DockerException):
        raise  # the engine failed mid-stream (requests' errors are OSErrors too): not the archive's fault
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DeliveryError("bad_image", f"unreadable docker save archive: {exc}") from exc


def _safe_name(name: str) -> str:
    """An archive name as a relative path that stays inside the archive, or bad_image."""
    clean = posixpath.normpath(name) if name else ""
    if not clean or clean == "." or clean.startswith("/") or "\0" in clean or ".." in clean.split("/"):
        raise DeliveryError("bad_image", f"archive path {name!r} would leave the archive")
    return clean


def _resolve(blobs: Mapping[str, Any], links: Mapping[str, str], name: object) -> str:
    """Follow the archive's own links by name (legacy saves link a repeated layer to its first
    copy); links are never made on disk, so one can only name another member."""
    if not isinstance(name, str):
        raise DeliveryError("bad_image", f"manifest.json names {name!r}, not a path")
    current = _safe_name(name)
    for _ in range(8):  # a bound, for links in a loop
        if current in blobs:
            return current
        if current not in links:
            break
        current = links[current]
    raise DeliveryError("bad_image", f"the archive has no file {name!r} that manifest.json names")


def _layer_file(blob: tuple[Path, str, int], name: str, digest: str, workdir: Path) -> tuple[Path, int]:
    """The file holding the uncompressed layer ``name``, checked against ``digest``. The
    containerd image store saves compressed layers; those are gunzipped and checked again."""
    path, actual, size = blob
    final = workdir / f"{digest.removeprefix('sha256:')}.tar"
    if "sha256:" + actual == digest:
        os.replace(path, final)
        return final, size
    with open(path, "rb") as head:
        if head.read(2) != b"\x1f\x8b":
            raise DeliveryError("integrity", f"layer {name} hashes to sha256:{actual}, not {digest}")
    try:
        with gzip.open(path, "rb") as source:
            actual, size = _copy_hashed(source, final)
    except (OSError, EOFError) as exc:
        final.unlink(missing_ok=True)
        raise DeliveryError("bad_image", f"layer {name} is neither a tar nor a readable gzip: {exc}") from exc
    if "sha256:" + actual != digest:
        final.unlink(missing_ok=True)
        raise DeliveryError("integrity", f"layer {name} unpacks to sha256:{actual}, not {digest}")
    return final, size


# -- layers an engine holds --------------------------------------------------------------------


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Docker's ChainID of each prefix of the layers: the engine stores and finds a layer by
    it, because the same diff on another parent is another filesystem."""
    chains: list[str] = []
    for diff in diff_ids:
        if chains:
            diff = "sha256:" + hashlib.sha256(f"{chains[-1]} {diff}".encode()).hexdigest()
        chains.append(diff)
    return chains


def present_layers(client: docker.DockerClient) -> set[str]:
    """Chain ids of every layer the engine holds, read off every local image (intermediate
    ones included) since the engine API lists images, not layers. The list itself lacks RootFS,
    so each image is inspected (as ``images.list`` does), and one removed meanwhile (by a
    cleanup, another process) is skipped instead of failing the whole delivery."""
    present: set[str] = set()
    with _docker_errors("list images"):
        for summary in client.api.images(all=True):
            try:
                attrs = client.api.inspect_image(summary["Id"])
            except docker.errors.ImageNotFound:
                continue
            present.update(chain_ids((attrs.get("RootFS") or {}).get("Layers") or []))
    return present


def missing_layers(client: docker.DockerClient, diff_ids: Sequence[str]) -> list[int]:
    """Indexes of the layers to download for an image with these diff_ids: those whose chain
    the engine lacks (always a tail of the list: a present chain implies its parents)."""
    present = present_layers(client)
    return [i for i, chain in enumerate(chain_ids(diff_ids)) if chain not in present]


# -- load --------------------------------------------------------------------------------------


def load_image(
    client: docker.DockerClient, image_id: str, config: bytes, files: Mapping[int, Path], workdir: Path
) -> None:
    """Make the engine hold ``image_id`` from its config and the files of the layers it lacks.

    Every given file is checked before the load archive is even written, so a tampered
    download never reaches the engine. Layers the engine has are named in the manifest without
    a file (the engine looks a layer up by ChainID before it opens the file); nothing is
    tagged, since volunteers run images by id."""
    actual = "sha256:" + hashlib.sha256(config).hexdigest()
    if actual != image_id:
        raise DeliveryError("integrity", f"the config hashes to {actual}, not to the image id {image_id}")
    diff_ids = _diff_ids(config)
    if set(files) - set(range(len(diff_ids))):
        raise DeliveryError("bad_image", f"files given for layers {sorted(files)} of a {len(diff_ids)}-layer image")
    needed = missing_layers(client, diff_ids)
    lacking = [i for i in needed if i not in files]
    if lacking:
        raise DeliveryError("integrity", f"the engine lacks layers {lacking} of {image_id} and no file was given")
    for i, path in sorted(files.items()):  # given but not needed too: a file must be what it claims
        if "sha256:" + (got := _hash_file(path)) != diff_ids[i]:
            raise DeliveryError("integrity", f"{path} hashes to sha256:{got}, not to layer {i}'s {diff_ids[i]}")
    workdir.mkdir(parents=True, exist_ok=True)
    hexid = image_id.removeprefix("sha256:")
    archive = workdir / f"load-{hexid[:16]}.tar"
    manifest = [
        {"Config": f"{hexid}.json", "RepoTags": None, "Layers": [f"{i}/layer.tar" for i in range(len(diff_ids))]}
    ]
    try:
        try:
            with tarfile.TarFile(archive, "w", copybufsize=BLOCK) as tar:
                _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
                _add_bytes(tar, f"{hexid}.json", config)
                for i in needed:
                    with open(files[i], "rb") as layer:  # fstat, not lstat: a symlinked file goes in as a file
                        tar.addfile(tar.gettarinfo(arcname=f"{i}/layer.tar", fileobj=layer), layer)
        except OSError as exc:
            raise DeliveryError("docker", f"cannot write the load archive {archive} (disk full?): {exc}") from exc
        with _docker_errors(f"load image {image_id}"), open(archive, "rb") as stream:
            client.images.load(stream)  # a file object: requests streams it, never whole in memory
    finally:
        archive.unlink(missing_ok=True)
    with _docker_errors(f"find the loaded image {image_id}", not_found="integrity"):
        loaded = client.images.get(image_id).id
    if loaded != image_id:
        raise DeliveryError("integrity", f"the engine holds {loaded} after loading {image_id}")
    log.info("loaded %s: %d of %d layers sent", image_id, len(needed), len(diff_ids))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# -- shared ------------------------------------------------------------------------------------


def _diff_ids(config: bytes) -> list[str]:
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DeliveryError("bad_image", f"not a docker image config (no rootfs.diff_ids): {exc}") from exc
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and d.startswith("sha256:") for d in diff_ids):
        raise DeliveryError("bad_image", "rootfs.diff_ids of the image config are not sha256 digests")
    return diff_ids


def _copy_hashed(source: IO[bytes] | gzip.GzipFile, path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as out:
        while block := source.read(BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
    return digest.hexdigest(), size


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as source:
            while block := source.read(BLOCK):
                digest.update(block)
        return digest.hexdigest()
    except OSError as exc:
        raise DeliveryError("integrity", f"cannot read layer file {path}: {exc}") from exc


class _ChunkReader(io.RawIOBase):
    """A file over ``image.save()``'s chunks, for tarfile's stream mode (a bytearray drops
    its head in O(1), so reading it piecemeal stays linear)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else size
        block = bytes(self._buffer[:size])
        del self._buffer[:size]
        return block


@contextlib.contextmanager
def _docker_errors(what: str, not_found: str = "docker") -> Iterator[None]:
    """Engine failures as DeliveryError("docker") that say what to do about them; a missing
    image is ``not_found`` (no such image to export, or a load that did not take)."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise DeliveryError(not_found, f"cannot {what}: the engine has no such image ({exc.explanation})") from exc
    except docker.errors.APIError as exc:
        reason = exc.explanation or str(exc)
        raise DeliveryError("docker", f"cannot {what}: the Docker engine said {reason}") from exc
    except docker.errors.DockerException as exc:  # ImageLoadError and friends
        raise DeliveryError("docker", f"cannot {what}: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        raise DeliveryError(
            "docker", f"cannot {what}: the Docker engine did not answer ({exc}); is dockerd running?"
        ) from exc
