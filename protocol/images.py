"""Images as the master delivers them: Docker's own digests, layers cut into pieces.

An image is named by Docker's image id (``sha256:`` of its config); each layer by its
digest (``sha256:`` of the uncompressed layer tar, the config's ``rootfs.diff_ids``). A
layer's bytes travel as consecutive pieces of PIECE_SIZE bytes, each an ordinary
content-addressed blob (xxh3-128), so a transfer resumes piece by piece and a bad piece is
found before the whole layer is checked against its sha256.
"""

import re
from dataclasses import dataclass, field

from .errors import ProtocolError
from .messages import Message

PIECE_SIZE = 8 << 20
MAX_PIECES = 4096  # a layer of up to 32 GiB
MAX_LAYERS = 256
MAX_TAGS = 16
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# a Docker reference with a tag: [host[:port]/]path[:tag], lowercase path components
TAG_RE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
)
PINNED_RE = re.compile(r"[^@\s]{1,255}@sha256:[0-9a-f]{64}")  # name@sha256:..., pulled by digest only


def check_digest(value: object, what: str = "digest") -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise ProtocolError(f"{what} must be sha256: and 64 lowercase hex digits, got {value!r:.80}")
    return value


def normalize_tag(ref: str) -> str:
    """A tag as Docker lists it: ``wordfreq`` is ``wordfreq:latest``."""
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def check_tag(value: object) -> str:
    if not isinstance(value, str) or len(value) > 255 or not TAG_RE.fullmatch(normalize_tag(value)):
        raise ProtocolError(f"{value!r:.80} is not an image tag such as dockercomp/wordfreq:latest")
    return normalize_tag(value)


@dataclass(frozen=True)
class LayerInfo(Message):
    digest: str
    size: int
    pieces: list[str]


@dataclass(frozen=True)
class SignatureInfo(Message):
    key: str
    public_key: str
    signature: str


@dataclass(frozen=True)
class ImageInfo(Message):
    """What ``GET /api/v1/images/ID`` answers: all a daemon needs to fetch and check an image."""

    id: str
    config: str  # xxh3-128 hash of the config blob
    config_size: int
    layers: list[LayerInfo]
    tags: list[str] = field(default_factory=list)
    signatures: list[SignatureInfo] = field(default_factory=list)
    owner: str = ""
    pushed_at: float = 0.0
