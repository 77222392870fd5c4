"""The embedded default backend: units, attempts and small blobs in one SQLite file."""

from .blobs import SQLiteBlobStore
from .store import SQLiteStore

__all__ = ["SQLiteBlobStore", "SQLiteStore"]
