"""Write sample images for the imagefilter job into a directory: colour and gray pictures of
rectangles and discs over a gradient, as PNG, PPM and PGM files, the same bytes for the same
seed, count and size. Standard library only (PNG is written with zlib).

    python3 workloads/imagefilter/sample.py --out images --count 24
"""

import argparse
import random
import struct
import sys
import zlib
from pathlib import Path

Pixel = tuple[int, ...]
FORMATS = ("png", "ppm", "pgm", "gray.png")


def picture(rng: random.Random, width: int, height: int) -> list[list[Pixel]]:
    """Rows of RGB pixels: a diagonal gradient, then a few filled rectangles and discs."""
    a, b = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
    span = max(1, width + height - 2)
    rows = [
        [tuple(a[c] + (b[c] - a[c]) * (x + y) // span for c in range(3)) for x in range(width)] for y in range(height)
    ]
    for _ in range(rng.randint(2, 6)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x0, y0 = rng.randrange(width), rng.randrange(height)
        w, h = rng.randint(4, max(4, width // 2)), rng.randint(4, max(4, height // 2))
        disc = rng.random() < 0.5
        cx, cy, r2 = x0 + w / 2, y0 + h / 2, (min(w, h) / 2) ** 2
        for y in range(y0, min(height, y0 + h)):
            row = rows[y]
            for x in range(x0, min(width, x0 + w)):
                if not disc or (x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r2:
                    row[x] = colour
    return rows


def gray(rows: list[list[Pixel]]) -> list[list[int]]:
    return [[(r * 299 + g * 587 + b * 114) // 1000 for r, g, b in row] for row in rows]


def png(width: int, height: int, colour: bool, raw_rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    body = zlib.compress(b"".join(b"\x00" + row for row in raw_rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def encode(rows: list[list[Pixel]], fmt: str) -> bytes:
    height, width = len(rows), len(rows[0])
    rgb = [bytes(c for pixel in row for c in pixel) for row in rows]
    if fmt == "png":
        return png(width, height, True, rgb)
    if fmt == "ppm":
        return b"P6\n%d %d\n255\n" % (width, height) + b"".join(rgb)
    levels = [bytes(row) for row in gray(rows)]
    if fmt == "pgm":
        return b"P5\n%d %d\n255\n" % (width, height) + b"".join(levels)
    return png(width, height, False, levels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the images into (created)")
    parser.add_argument("--count", type=int, default=24, help="how many images (default 24)")
    parser.add_argument("--min-size", type=int, default=64, help="smallest width or height in pixels (default 64)")
    parser.add_argument("--max-size", type=int, default=320, help="largest width or height in pixels (default 320)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.min_size <= args.max_size:
        parser.error("--min-size must be at least 1 and at most --max-size")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for number in range(args.count):
        width, height = rng.randint(args.min_size, args.max_size), rng.randint(args.min_size, args.max_size)
        fmt = FORMATS[number % len(FORMATS)]
        name = f"img{number:04d}-gray.png" if fmt == "gray.png" else f"img{number:04d}.{fmt}"
        (out / name).write_bytes(encode(picture(rng, width, height), fmt))
    print(f"{args.count} images in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
