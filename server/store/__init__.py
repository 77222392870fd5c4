"""Store backends behind one interface; ``open_store`` picks one by URL."""

import os

from ..blobs import BlobStore, DirectoryBlobStore
from .base import Store
from .migrate import BadStoreURL, MigrationReport, SchemaTooNew, backend_of, migrate, sqlite_path

__all__ = ["BadStoreURL", "MigrationReport", "SchemaTooNew", "Store", "migrate", "open_store"]


async def open_store(url: str, data_dir: str) -> tuple[Store, BlobStore]:
    """The store and blob store for ``url``: ``sqlite:///PATH`` keeps small blobs in the
    database and the others in a directory beside it; ``mongodb://…/DB`` keeps them in GridFS
    (needs pymongo)."""
    if backend_of(url) == "sqlite":  # BadStoreURL for a URL naming no backend
        from .sqlite import SQLiteBlobStore, SQLiteStore

        path = sqlite_path(url, data_dir)
        sqlite = SQLiteStore(path)
        await sqlite.open()  # creates the database in WAL mode, and the connection the blob store shares
        files = DirectoryBlobStore(os.path.join(os.path.dirname(os.path.abspath(path)), "blobs"))
        return sqlite, SQLiteBlobStore(path, files, sqlite.connection)
    from pymongo.errors import ConfigurationError, InvalidURI

    from .mongo import open_mongodb

    try:
        store, blobs = open_mongodb(url)
    except (InvalidURI, ConfigurationError) as exc:
        raise BadStoreURL(f"bad MongoDB URL: {exc}") from None
    await store.open()
    return store, blobs
