"""What the imagefilter steps share: how a picture is filtered, how results are named, and
how they are packed, byte for byte the same on every volunteer.

Filtering (Pillow, Debian's python3-pil in the image): the picture as displayed (its EXIF
orientation applied, the first frame of an animation, transparency over white), shrunk to
fit MAX_SIZE x MAX_SIZE when MAX_SIZE is set, converted to 8-bit grayscale (ITU-R 601-2
luma), then, with FILTER=edges (the default), Pillow's FIND_EDGES: the 3x3 kernel
-1 -1 -1 / -1 8 -1 / -1 -1 -1, clipped to 0..255, the outermost pixels kept as they were.
FILTER=gray stops after the grayscale step.

Results are PNG files named after their input with the extension replaced (``cat.jpg`` gives
``cat.png``); a name taken already gets ``-2``, ``-3``... before its extension. They are
packed in uncompressed tar archives with fixed metadata (mode 0644, owner 0, time 0), and
written without any timestamp or ancillary chunk, so replicas agree on the bytes.
"""

import io
import posixpath
import sys
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO

FILTERS = ("edges", "gray")


def settings(environ: Mapping[str, str]) -> tuple[str, int]:
    """FILTER and MAX_SIZE from the environment; exit 2 with a message when they are wrong."""
    kind = environ.get("FILTER", "").strip() or "edges"
    if kind not in FILTERS:
        print(f"FILTER must be one of {', '.join(FILTERS)}, got {kind!r:.40}", file=sys.stderr)
        sys.exit(2)
    raw = environ.get("MAX_SIZE", "").strip() or "0"
    if not (raw.isascii() and raw.isdigit() and int(raw) <= 65535):
        print(f"MAX_SIZE must be a number of pixels from 0 (keep the size) to 65535, got {raw!r:.40}", file=sys.stderr)
        sys.exit(2)
    return kind, int(raw)


def filtered_png(data: bytes, kind: str = "edges", max_size: int = 0) -> bytes:
    """The filtered picture of an image file's bytes, as PNG bytes. Raises OSError (Pillow's
    UnidentifiedImageError is one) when the bytes are not an image Pillow can read."""
    from PIL import Image, ImageFilter, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        opened.seek(0)
        picture = ImageOps.exif_transpose(opened)
        picture.load()
    if picture.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        picture = picture.convert("I")
    if picture.mode == "I":  # 16-bit pictures: scale 0..65535 to 0..255
        picture = picture.point(lambda v: v * (1 / 257)).convert("L")
    if picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if max_size:
        picture.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    gray = picture.convert("L")
    result = gray.filter(ImageFilter.FIND_EDGES) if kind == "edges" else gray
    result.info = {}  # no ICC profile, dpi or text carried over from the input
    out = io.BytesIO()
    result.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def result_name(name: str) -> str:
    """``dir/cat.jpg`` -> ``cat.png``; a name without extension gets ``.png`` added."""
    base = posixpath.basename(name.rstrip("/")) or "image"
    stem, dot, _ = base.rpartition(".")
    return f"{stem if dot and stem else base}.png"


def unique(name: str, taken: set[str]) -> str:
    """``name`` itself when it is free, else ``stem-2.png``, ``stem-3.png``...; marked taken."""
    candidate, number = name, 1
    stem = name[: -len(".png")] if name.endswith(".png") else name
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}.png"
    taken.add(candidate)
    return candidate


def members(archive: IO[bytes], where: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file in a tar archive, in archive order. An empty file
    is an empty archive; anything else that is not a tar fails the unit."""
    if not archive.read(1):
        return
    archive.seek(0)
    try:
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    yield member.name, extracted.read()
    except tarfile.TarError as exc:
        sys.exit(f"{where}: not a tar archive ({exc})")


def write_tar(target: IO[bytes], files: Iterable[tuple[str, bytes]]) -> int:
    """Pack (name, bytes) pairs into an uncompressed tar with fixed metadata; how many."""
    count = 0
    with tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count
