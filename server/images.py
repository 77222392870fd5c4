"""Workload images delivered by the master, no registry needed (under /api/v1/).

- ``PUT /layers/DIGEST`` ``{"size": N, "pieces": [HASH, ...]}``: record a layer whose pieces
  were uploaded as blobs; the master reads them back and checks their sha256 against the
  digest before it records anything. ``GET /layers/DIGEST``: 404 until then, so a push sends
  only the layers the master lacks.
- ``POST /images`` ``{"config": HASH, "id": "sha256:...", "tags": [...]}``: register an image
  from its config blob: the id is the sha256 of the config, every layer it names must be
  recorded. ``GET /images`` lists them, ``GET /images/ID-OR-TAG`` answers one with its layers.
- ``POST /images/ID/signatures``: add a signature (checked against its own key here; each
  volunteer checks it again against the keys it trusts). ``GET /signers/FINGERPRINT``: the
  public key of a signer, PEM, for the installer to pin.
"""

import asyncio
import hashlib
import json
from typing import Any

from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.images import (
    MAX_LAYERS,
    MAX_PIECES,
    MAX_TAGS,
    PIECE_SIZE,
    check_digest,
    check_tag,
    normalize_tag,
)
from dockercomp.protocol.integrity import check_hash
from dockercomp.protocol.signing import Signed, check, check_image_id, public_from_hex, public_pem

from .auth import Role
from .errors import BadRequest, Conflict, NotFound
from .handlers import BaseHandler
from .models import Image, Layer
from .store import Store

MAX_CONFIG = 4 << 20


def image_json(image: Image, layers: list[Layer]) -> dict[str, Any]:
    return image.to_json() | {
        "layers": [{"digest": layer.digest, "size": layer.size, "pieces": list(layer.pieces)} for layer in layers]
    }


async def resolve(store: Store, ref: str) -> Image:
    """The pushed image a job's ``image`` names (an id or a tag), or a 400 saying what to push."""
    image = await store.get_image(ref if ref.startswith("sha256:") else normalize_tag(ref))
    if image is None:
        raise BadRequest(f"no image {ref!r:.120} on this master; push it first: dockercomp images push {ref:.120}")
    return image


class LayerHandler(BaseHandler):
    async def get(self, digest: str) -> None:
        layer = await self.master.store.get_layer(check_digest(digest, "layer digest"))
        if layer is None:
            raise NotFound(f"no layer {digest}; push it")
        self.reply({"digest": layer.digest, "size": layer.size, "pieces": list(layer.pieces)})

    async def put(self, digest: str) -> None:
        check_digest(digest, "layer digest")
        body = self.payload()
        if not isinstance(body, dict) or set(body) != {"size", "pieces"}:
            raise BadRequest('body must be {"size": BYTES, "pieces": ["<hash>", ...]}')
        size, pieces = body["size"], body["pieces"]
        if not isinstance(pieces, list) or not 0 < len(pieces) <= MAX_PIECES:
            raise BadRequest(f"pieces must be a list of 1 to {MAX_PIECES} blob hashes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_PIECES * PIECE_SIZE:
            raise BadRequest("size must be the layer's length in bytes")
        pieces = [check_hash(p, f"pieces[{i}]") for i, p in enumerate(pieces)]
        sizes = [await self.master.blobs.size(p) for p in pieces]
        missing = [p for p, n in zip(pieces, sizes, strict=True) if n is None]
        if missing:
            raise BadRequest(f"{len(missing)} piece(s) not uploaded, e.g. {missing[0]}; PUT each to /api/v1/blobs/HASH")
        if sum(n or 0 for n in sizes) != size:
            raise BadRequest(f"the pieces hold {sum(n or 0 for n in sizes)} bytes, not the {size} given as size")
        actual = await self._sha256(pieces)
        if actual != digest:
            raise IntegrityError(digest, actual, "the layer's pieces in order")
        await self.master.store.add_layer(Layer(digest, size, tuple(pieces)))
        self.reply({"digest": digest, "size": size, "pieces": pieces}, status=201)

    async def _sha256(self, pieces: list[str]) -> str:
        digest = hashlib.sha256()
        loop = asyncio.get_running_loop()
        for piece in pieces:
            data = await self.master.blobs.read(piece)
            await loop.run_in_executor(None, digest.update, data)  # a layer may be many MiB
        return f"sha256:{digest.hexdigest()}"


class ImagesHandler(BaseHandler):
    async def get(self) -> None:
        images = await self.master.store.list_images()
        self.reply({"images": [image.to_json() for image in images]})

    async def post(self) -> None:
        body = self.payload()
        if not isinstance(body, dict) or not {"config"} <= set(body) <= {"config", "id", "tags"}:
            raise BadRequest('body must be {"config": "<hash of the uploaded config>", "id": "sha256:...", "tags": []}')
        config_hash = check_hash(body["config"], "config")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise BadRequest(f"tags must be a list of at most {MAX_TAGS} image tags")
        try:
            tags = list(dict.fromkeys(check_tag(t) for t in tags))
        except ProtocolError as exc:
            raise BadRequest(str(exc)) from None
        size = await self.master.blobs.size(config_hash)
        if size is None:
            raise BadRequest(f"config {config_hash} was not uploaded; PUT it to /api/v1/blobs/{config_hash}")
        if size > MAX_CONFIG:
            raise BadRequest(f"an image config of {size} bytes is not a Docker image config")
        config = await self.master.blobs.read(config_hash)
        image_id = f"sha256:{hashlib.sha256(config).hexdigest()}"
        if body.get("id") is not None and check_image_id(body["id"]) != image_id:
            raise IntegrityError(body["id"], image_id, "the config (whose sha256 is the image id)")
        layers = await self._layers(_diff_ids(config))
        for tag in tags:
            held = await self.master.store.get_image(tag)
            if held is not None and held.owner != self.caller.name and self.caller.role != Role.OPERATOR:
                raise Conflict(f"tag {tag} belongs to {held.owner}; push under another name")
        image = Image(image_id, config_hash, size, tuple(layer.digest for layer in layers), self.caller.name,
                      self.master.now(), tuple(tags))  # fmt: skip
        stored = await self.master.store.add_image(image)
        self.reply(image_json(stored, layers), status=201)

    async def _layers(self, diff_ids: list[str]) -> list[Layer]:
        layers, missing = [], []
        for digest in diff_ids:
            layer = await self.master.store.get_layer(digest)
            if layer is None:
                missing.append(digest)
            else:
                layers.append(layer)
        if missing:
            count = len(missing)
            raise BadRequest(f"{count} layer(s) of this image are not pushed, e.g. {missing[0]}; push those first")
        return layers


class ImageHandler(BaseHandler):
    async def get(self, ref: str) -> None:
        image = await resolve(self.master.store, ref)
        layers = [await self.master.store.get_layer(digest) for digest in image.layers]
        self.reply(image_json(image, [layer for layer in layers if layer is not None]))


class SignaturesHandler(BaseHandler):
    async def post(self, image_id: str) -> None:
        check_image_id(image_id)
        body = self.payload()
        if not isinstance(body, dict) or set(body) != {"key", "public_key", "signature"}:
            raise BadRequest('body must be {"key": FINGERPRINT, "public_key": HEX, "signature": HEX}')
        if not all(isinstance(v, str) and len(v) <= 256 for v in body.values()):
            raise BadRequest("key, public_key and signature must be hex strings")
        signed = Signed(body["key"], body["public_key"], body["signature"])
        check(signed, image_id)  # SigningError is a ProtocolError: 400 with the reason
        image = await self.master.store.add_signature(image_id, signed)
        self.reply(image.to_json(), status=201)


class SignerHandler(BaseHandler):
    async def get(self, fingerprint: str) -> None:
        for image in await self.master.store.list_images():
            for signed in image.signatures:
                if signed.key == fingerprint:
                    self.set_header("Content-Type", "application/x-pem-file")
                    self.finish(public_pem(public_from_hex(signed.public_key)))
                    return
        raise NotFound(f"no image on this master is signed by {fingerprint[:64]!r}")


def _diff_ids(config: bytes) -> list[str]:
    """The layer digests a Docker image config names, bottom first."""
    try:
        doc = json.loads(config)
        diff_ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise BadRequest("the config is not a Docker image config (no rootfs.diff_ids)") from None
    if not isinstance(diff_ids, list) or not 0 < len(diff_ids) <= MAX_LAYERS:
        raise BadRequest(f"an image has 1 to {MAX_LAYERS} layers")
    try:
        return [check_digest(d, f"rootfs.diff_ids[{i}]") for i, d in enumerate(diff_ids)]
    except ProtocolError as exc:
        raise BadRequest(str(exc)) from None
