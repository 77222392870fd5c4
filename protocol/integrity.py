"""Content addressing: every chunk and result is named by its xxh3-128 hash (32 hex digits)."""

import re
from collections.abc import Iterable

import xxhash

from .errors import IntegrityError, ProtocolError

HASH_RE = re.compile(r"[0-9a-f]{32}")


def digest(data: bytes) -> str:
    """The xxh3-128 hex digest of ``data``."""
    return xxhash.xxh3_128_hexdigest(data)


def digest_stream(pieces: Iterable[bytes]) -> str:
    """The xxh3-128 hex digest of the concatenation of ``pieces``, without joining them."""
    hasher = xxhash.xxh3_128()
    for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()


def check_hash(value: object, what: str = "hash") -> str:
    """Return ``value`` if it is a well-formed hash, else raise ProtocolError."""
    if not isinstance(value, str) or not HASH_RE.fullmatch(value):
        raise ProtocolError(f"{what} must be 32 lowercase hex digits (xxh3-128), got {value!r:.60}")
    return value


def verify(data: bytes, expected: str, what: str = "data") -> None:
    """Raise IntegrityError unless ``data`` hashes to ``expected``."""
    actual = digest(data)
    if actual != expected:
        raise IntegrityError(expected, actual, what)
