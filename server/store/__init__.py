"""Store backends behind one interface; ``open_store`` picks one by URL."""

import os

from ..blobs import BlobStore, DirectoryBlobStore
from .base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str, data_dir: str) -> tuple[Store, BlobStore]:
    """The store and blob store for ``url``: ``sqlite:///PATH`` keeps small blobs in the
    database and the others in a directory beside it; ``mongodb://…/DB`` keeps them in GridFS
    (needs pymongo)."""
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteBlobStore, SQLiteStore

        path = os.path.normpath(url.removeprefix("sqlite://") or os.path.join(data_dir, "dockercomp.db"))
        sqlite = SQLiteStore(path)
        await sqlite.open()  # creates the database in WAL mode, and the connection the blob store shares
        files = DirectoryBlobStore(os.path.join(os.path.dirname(os.path.abspath(path)), "blobs"))
        return sqlite, SQLiteBlobStore(path, files, sqlite.connection)
    from .mongo import open_mongodb

    store, blobs = open_mongodb(url)
    await store.open()
    return store, blobs
