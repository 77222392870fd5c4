"""The scale-out backend: MongoDB through PyMongo's async API, blobs in GridFS. Several
stateless masters share one database."""

try:
    import pymongo  # noqa: F401
except ImportError as exc:  # pragma: no cover - only the server extra brings it
    raise ImportError("the mongodb store needs PyMongo 4.13 or newer: pip install 'dockercomp[server]'") from exc

from ...blobs import BlobStore
from ..base import Store
from .gridfs import GridFSBlobStore
from .store import MongoStore

__all__ = ["GridFSBlobStore", "MongoStore", "open_mongodb"]


def open_mongodb(url: str) -> tuple[Store, BlobStore]:
    """The store and GridFS blob store for a ``mongodb://host/DB`` URL (DB defaults to
    "dockercomp"), sharing one client that the store closes."""
    store = MongoStore(url)
    return store, GridFSBlobStore(store.db)
