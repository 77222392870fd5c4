"""Keys, images and uploads in SQLite: who may call the master, the workloads it delivers, and
the bytes each owner stored. Each write is one transaction of the store's (``SQLiteStore._tx``),
like any other."""

import json
import sqlite3
from contextlib import AbstractContextManager

from dockercomp.protocol.signing import Signed

from ...auth import Key, Role
from ...errors import Conflict, NotFound, StoreUnavailable, TooLarge
from ...models import Image, Layer
from ..base import image_from, merge_image, over_quota, with_signature


class Catalog:
    """The keys and images half of SQLiteStore."""

    _db: sqlite3.Connection | None

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    # -- keys ---------------------------------------------------------------------------
    async def add_key(self, key: Key) -> None:
        with self._tx() as db:
            insert_key(db, key)

    async def find_key(self, token_hash: str) -> Key | None:
        """Every request asks this: one indexed read, not a write transaction."""
        if self._db is None:
            raise StoreUnavailable("the store is not open")
        row = self._db.execute("SELECT * FROM keys WHERE token_hash = ?", (token_hash,)).fetchone()
        return _key_from(row) if row else None

    async def list_keys(self) -> list[Key]:
        with self._tx() as db:
            return [_key_from(row) for row in db.execute("SELECT * FROM keys ORDER BY created_at, name")]

    async def revoke_key(self, name: str, now: float) -> int:
        with self._tx() as db:
            return db.execute(
                "UPDATE keys SET revoked_at = ? WHERE revoked_at IS NULL AND (name = ? OR (account = ? AND"
                " role = 'client' AND EXISTS (SELECT 1 FROM keys WHERE name = ? AND role = 'volunteer')))",
                (now, name, name, name),
            ).rowcount

    # -- images -------------------------------------------------------------------------
    async def add_layer(self, layer: Layer) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO layers VALUES (?, ?, ?)", (layer.digest, layer.size, json.dumps(layer.pieces))
            )

    async def get_layer(self, digest: str) -> Layer | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM layers WHERE digest = ?", (digest,)).fetchone()
        return Layer(row["digest"], row["size"], tuple(json.loads(row["pieces"]))) if row else None

    async def add_image(self, image: Image) -> Image:
        with self._tx() as db:
            stored = merge_image(_image_in(db, image.id), image)
            _put_image(db, stored)
            db.executemany("INSERT OR REPLACE INTO image_tags VALUES (?, ?)", ((t, image.id) for t in image.tags))
            return stored

    async def get_image(self, ref: str) -> Image | None:
        with self._tx() as db:
            row = db.execute("SELECT image_id FROM image_tags WHERE tag = ?", (ref,)).fetchone()
            return _image_in(db, row[0] if row else ref)

    async def list_images(self, owner: str | None = None) -> list[Image]:
        where, params = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with self._tx() as db:
            rows = db.execute(f"SELECT doc FROM images {where} ORDER BY pushed_at DESC, id", params).fetchall()
        return [image_from(json.loads(row[0])) for row in rows]

    # -- uploads ------------------------------------------------------------------------
    async def uploaded(self, owner: str) -> int:
        with self._tx() as db:
            return _used(db, owner)

    async def add_uploads(self, owner: str, blobs: list[tuple[str, int]], now: float, quota: int = 0) -> None:
        with self._tx() as db:
            new = dict(blobs)
            for i in range(0, len(blobs), 500):  # SQLite's limit on parameters
                some = [blob for blob, _ in blobs[i : i + 500]]
                marks = ", ".join("?" * len(some))
                for (blob,) in db.execute(f"SELECT blob FROM uploads WHERE owner = ? AND blob IN ({marks})",
                                          (owner, *some)):  # fmt: skip
                    new.pop(blob, None)
            if not new:
                return
            used, size = _used(db, owner), sum(new.values())
            if quota and used + size > quota:
                raise TooLarge(over_quota(owner, used, size, quota))
            db.executemany("INSERT INTO uploads VALUES (?, ?, ?, ?)", [(owner, b, n, now) for b, n in new.items()])
            db.execute("INSERT INTO upload_totals VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET size = size + ?",
                       (owner, size, size))  # fmt: skip

    async def add_signature(self, image_id: str, signature: Signed) -> Image:
        with self._tx() as db:
            image = _image_in(db, image_id)
            if image is None:
                raise NotFound(f"no image {image_id!r:.80}; push it first (dockercomp images push)")
            signed = with_signature(image, signature)
            _put_image(db, signed)
            return signed


def insert_key(db: sqlite3.Connection, key: Key) -> None:
    try:
        db.execute(
            "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.name, key.role, key.token_hash, key.created_at, key.account, key.client, key.expires_at,
             key.revoked_at),
        )  # fmt: skip
    except sqlite3.IntegrityError:
        raise Conflict(f"a key named {key.name!r} exists already; choose another name") from None


def _key_from(row: sqlite3.Row) -> Key:
    return Key(
        name=row["name"], role=Role(row["role"]), token_hash=row["token_hash"], created_at=row["created_at"],
        account=row["account"], client=row["client"], expires_at=row["expires_at"], revoked_at=row["revoked_at"],
    )  # fmt: skip


def _used(db: sqlite3.Connection, owner: str) -> int:
    row = db.execute("SELECT size FROM upload_totals WHERE owner = ?", (owner,)).fetchone()
    return int(row[0]) if row else 0


def _image_in(db: sqlite3.Connection, image_id: str) -> Image | None:
    row = db.execute("SELECT doc FROM images WHERE id = ?", (image_id,)).fetchone()
    return image_from(json.loads(row[0])) if row else None


def _put_image(db: sqlite3.Connection, image: Image) -> None:
    db.execute(
        "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
        (image.id, image.owner, image.pushed_at, json.dumps(image.to_json())),
    )
