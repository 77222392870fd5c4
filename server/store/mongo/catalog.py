"""Keys, images and uploads in MongoDB: who may call the master, the workloads it delivers, and
the bytes each owner stored."""

import contextlib
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from dockercomp.protocol.signing import Signed

from ...auth import Key, Role
from ...errors import Conflict, NotFound, TooLarge
from ...models import Image, Layer
from ..base import image_from, over_quota
from .guard import guard

Doc = dict[str, Any]


class Catalog:
    """The keys and images half of MongoStore."""

    _keys: Any
    _layers: Any
    _images: Any
    _uploads: Any

    # -- uploads ------------------------------------------------------------------------
    @guard
    async def uploaded(self, owner: str) -> int:
        doc = await self._uploads.find_one({"_id": f"total/{owner}"})
        return int(doc["size"]) if doc else 0

    @guard
    async def add_uploads(self, owner: str, blobs: list[tuple[str, int]], now: float, quota: int = 0) -> None:
        """Each blob's document first (a blob counts once), then the owner's total as a
        compare-and-set on room left; when there is none, the documents go again."""
        new: dict[str, int] = {}
        for blob, size in dict(blobs).items():
            with contextlib.suppress(DuplicateKeyError):
                await self._uploads.insert_one({"_id": f"blob/{owner}/{blob}", "size": size, "at": now})
                new[blob] = size
        if not new:
            return
        size, total = sum(new.values()), {"_id": f"total/{owner}"}
        if not quota:
            await self._uploads.update_one(total, {"$inc": {"size": size}}, upsert=True)
            return
        counted = False
        if size <= quota:  # (past it, the upsert below would make a total of whatever was asked)
            with contextlib.suppress(DuplicateKeyError):  # no room: the upsert runs into the total there is
                room = {**total, "size": {"$lte": quota - size}}
                await self._uploads.update_one(room, {"$inc": {"size": size}}, upsert=True)
                counted = True
        if not counted:
            await self._uploads.delete_many({"_id": {"$in": [f"blob/{owner}/{blob}" for blob in new]}})
            raise TooLarge(over_quota(owner, await self.uploaded(owner), size, quota))

    # -- keys ---------------------------------------------------------------------------
    @guard
    async def add_key(self, key: Key) -> None:
        try:
            await self._keys.insert_one(key_doc(key))
        except DuplicateKeyError:
            raise Conflict(f"a key named {key.name!r} exists already; choose another name") from None

    @guard
    async def find_key(self, token_hash: str) -> Key | None:
        doc = await self._keys.find_one({"token_hash": token_hash})
        return _key_from(doc) if doc else None

    @guard
    async def list_keys(self) -> list[Key]:
        docs = await self._keys.find().sort([("created_at", ASCENDING), ("_id", ASCENDING)]).to_list(None)
        return [_key_from(doc) for doc in docs]

    @guard
    async def revoke_key(self, name: str, now: float) -> int:
        account = await self._keys.find_one({"_id": name, "role": Role.VOLUNTEER.value})
        scope: Doc = {"_id": name}
        if account is not None:
            scope = {"$or": [scope, {"account": name, "role": Role.CLIENT.value}]}
        done = await self._keys.update_many({"$and": [scope, {"revoked_at": None}]}, {"$set": {"revoked_at": now}})
        return done.modified_count

    # -- images -------------------------------------------------------------------------
    @guard
    async def add_layer(self, layer: Layer) -> None:
        doc = {"size": layer.size, "pieces": list(layer.pieces)}
        with contextlib.suppress(DuplicateKeyError):  # two pushes of one layer: the same bytes
            await self._layers.update_one({"_id": layer.digest}, {"$setOnInsert": doc}, upsert=True)

    @guard
    async def get_layer(self, digest: str) -> Layer | None:
        doc = await self._layers.find_one({"_id": digest})
        return Layer(doc["_id"], doc["size"], tuple(doc["pieces"])) if doc else None

    @guard
    async def add_image(self, image: Image) -> Image:
        """Insert the image (or add its tags), then take its tags off every other image: a
        tag names the image pushed with it last."""
        first = image.to_json() | {"_id": image.id, "tags": []}
        with contextlib.suppress(DuplicateKeyError):
            await self._images.update_one({"_id": image.id}, {"$setOnInsert": first}, upsert=True)
        tags = list(image.tags)
        await self._images.update_one({"_id": image.id}, {"$addToSet": {"tags": {"$each": tags}}})
        if tags:
            others = {"_id": {"$ne": image.id}, "tags": {"$in": tags}}
            await self._images.update_many(others, {"$pullAll": {"tags": tags}})
        stored = await self._images.find_one({"_id": image.id})
        return image_from(stored)

    @guard
    async def get_image(self, ref: str) -> Image | None:
        doc = await self._images.find_one({"$or": [{"_id": ref}, {"tags": ref}]})
        return image_from(doc) if doc else None

    @guard
    async def list_images(self, owner: str | None = None) -> list[Image]:
        query = {"owner": owner} if owner is not None else {}
        docs = await self._images.find(query).sort([("pushed_at", DESCENDING), ("_id", ASCENDING)]).to_list(None)
        return [image_from(doc) for doc in docs]

    @guard
    async def add_signature(self, image_id: str, signature: Signed) -> Image:
        entry = {"key": signature.key, "public_key": signature.public_key, "signature": signature.signature}
        await self._images.update_one({"_id": image_id}, {"$pull": {"signatures": {"key": signature.key}}})
        done = await self._images.find_one_and_update(
            {"_id": image_id}, {"$push": {"signatures": entry}}, return_document=ReturnDocument.AFTER
        )
        if done is None:
            raise NotFound(f"no image {image_id!r:.80}; push it first (dockercomp images push)")
        return image_from(done)


def key_doc(key: Key) -> Doc:
    return {
        "_id": key.name, "role": key.role.value, "token_hash": key.token_hash, "created_at": key.created_at,
        "account": key.account, "client": key.client, "expires_at": key.expires_at, "revoked_at": key.revoked_at,
    }  # fmt: skip


def _key_from(doc: Doc) -> Key:
    return Key(
        name=doc["_id"], role=Role(doc["role"]), token_hash=doc["token_hash"], created_at=doc["created_at"],
        account=doc["account"], client=doc["client"], expires_at=doc["expires_at"], revoked_at=doc["revoked_at"],
    )  # fmt: skip
