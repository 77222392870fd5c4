"""The imagefilter workload end to end: a set of images submitted with the scientist's
commands to a real master, chunked by files, filtered by two real daemons in real containers
with Debian's Pillow; the archive that comes back is taken apart here, each picture decoded
by a PNG reader written for this test and compared pixel for pixel with a grayscale
conversion and edge filter computed here from the documented formulas."""

import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

import docker
import pytest

from dockercomp.client import images
from tests.needs import skip_or_fail

from .cluster import Daemons, cli, job_units, wait_job

pytestmark = pytest.mark.slow

JOB_WAIT = 90.0
WORKLOAD = images.workloads_dir() / "imagefilter"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Picture = tuple[int, int, int, list[int]]  # width, height, channels, samples row by row


@pytest.fixture(scope="module")
def imagefilter_image(docker_client: docker.DockerClient) -> str:
    """Built offline FROM the base image; its Pillow comes from Debian's package mirror."""
    try:
        return images.build_workload(docker_client, "imagefilter")
    except images.ImageError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"cannot build the imagefilter image: {exc} (CI is set, so this is an error, not a skip)")
        skip_or_fail(f"cannot build the imagefilter image: {exc}")


# -- images read and computed here -------------------------------------------------------------


def read_png(data: bytes) -> tuple[Picture, list[bytes]]:
    """Decode an 8-bit, non-interlaced gray or RGB PNG, checking every chunk's CRC; the
    picture and the chunk types in file order."""
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    pos, kinds, idat = len(PNG_SIGNATURE), [], b""
    header = b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        kinds.append(kind)
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND", kinds
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (0, 2) and interlace == 0, (depth, colour, interlace)
    channels = 1 if colour == 0 else 3
    raw, stride = zlib.decompress(idat), width * channels
    samples: list[int] = []
    previous = [0] * stride
    for y in range(height):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        row: list[int] = []
        for x, value in enumerate(line):
            left = row[x - channels] if x >= channels else 0
            up, corner = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                value += left
            elif kind == 2:
                value += up
            elif kind == 3:
                value += (left + up) // 2
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                value += left if pa <= pb and pa <= pc else up if pb <= pc else corner
            row.append(value & 0xFF)
        samples += row
        previous = row
    return (width, height, channels, samples), kinds


def read_netpbm(data: bytes) -> Picture:
    """A binary PPM (P6) or PGM (P5) with maxval 255, as sample.py writes them."""
    magic, width, height, maxval, pixels = data.split(maxsplit=4)
    assert magic in (b"P5", b"P6") and maxval == b"255"
    return int(width), int(height), 3 if magic == b"P6" else 1, list(pixels)


def read_image(name: str, data: bytes) -> Picture:
    return read_png(data)[0] if name.endswith(".png") else read_netpbm(data)


def expected_edges(picture: Picture) -> list[int]:
    """ITU-R 601-2 luma in 16-bit fixed point (299/587/114 thousandths, rounded), then the
    3x3 kernel -1 -1 -1 / -1 8 -1 / -1 -1 -1 clipped to 0..255, the outermost pixels kept."""
    width, height, channels, samples = picture
    if channels == 1:
        gray = samples
    else:
        gray = [
            (samples[i] * 19595 + samples[i + 1] * 38470 + samples[i + 2] * 7471 + 0x8000) >> 16
            for i in range(0, len(samples), 3)
        ]
    edges = list(gray)
    for y in range(1, height - 1):
        for x in range(1, width - 1):
            around = sum(gray[(y + dy) * width + x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            edges[y * width + x] = min(255, max(0, 9 * gray[y * width + x] - around))
    return edges


def square_pgm(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    """White, with a black rectangle covering columns box[0]..box[2]-1 and rows box[1]..box[3]-1."""
    x0, y0, x1, y1 = box
    pixels = bytes(0 if x0 <= x < x1 and y0 <= y < y1 else 255 for y in range(height) for x in range(width))
    return b"P5\n%d %d\n255\n" % (width, height) + pixels


# -- the test -----------------------------------------------------------------------------------


def test_imagefilter_on_two_daemons_gives_the_edges_computed_here(
    master: Any, daemons: Daemons, imagefilter_image: str, tmp_path: Path
) -> None:
    """Sample pictures (PNG, PPM, PGM; colour and gray) and a black square on white, three
    files per unit, every unit computed by both volunteers with byte-identical outputs. The
    result is one tar holding, in input order, a grayscale PNG per input named after it, the
    same size, its pixels those computed here; the square's edge map is lit exactly on the
    ring of pixels just outside the square (and on the white border, kept as it was)."""
    pictures = tmp_path / "pictures"
    command = [sys.executable, str(WORKLOAD / "sample.py"), "--out", str(pictures), "--count", "9"]
    subprocess.run([*command, "--min-size", "16", "--max-size", "72", "--seed", "4"], check=True, capture_output=True)
    box = (12, 9, 30, 21)
    (pictures / "square.pgm").write_bytes(square_pgm(44, 32, box))
    inputs = sorted(pictures.iterdir())
    assert {p.suffix for p in inputs} == {".png", ".ppm", ".pgm"} and len(inputs) == 10

    job = json.loads((WORKLOAD / "job.json").read_text()) | {
        "chunking": {"by": "files", "size": 3},
        "redundancy": {"replicas": 2, "quorum": 2, "max_attempts": 4},
    }
    jobfile = tmp_path / "job.json"
    jobfile.write_text(json.dumps(job))
    one, two = daemons.start(master, "one"), daemons.start(master, "two")
    submitted = cli("submit", str(jobfile), *map(str, inputs), "--json", master=master)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job"]
    assert wait_job(master, job_id, JOB_WAIT)["state"] == "done"
    result = tmp_path / "edges.tar"
    downloaded = cli("results", job_id, "-o", str(result), master=master)
    assert downloaded.returncode == 0, downloaded.stderr

    units = job_units(master, job_id)
    assert [u["kind"] for u in units].count("map") == 4 and units[-1]["kind"] == "reduce"
    for unit in units:
        succeeded = [a for a in unit["attempts"] if a["state"] == "succeeded"]
        assert sorted(a["client"] for a in succeeded) == sorted([one.client, two.client]), unit
        assert all(a["validity"] == "valid" and a["output"] == unit["output"] for a in succeeded), unit

    with tarfile.open(result, mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{p.stem}.png" for p in inputs]
        assert all(m.isfile() and m.mode == 0o644 and m.mtime == 0 and m.uid == 0 for m in members)
        outputs = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    for source in inputs:
        (width, height, channels, pixels), kinds = read_png(outputs[f"{source.stem}.png"])
        original = read_image(source.name, source.read_bytes())
        assert (width, height) == original[:2], source.name
        assert channels == 1, f"{source.name}: not grayscale"
        assert set(kinds) <= {b"IHDR", b"IDAT", b"IEND"}, f"{source.name}: ancillary chunks {kinds}"
        assert pixels == expected_edges(original), f"{source.name}: pixels differ from the edges computed here"

    (width, height, _, pixels), _ = read_png(outputs["square.png"])
    x0, y0, x1, y1 = box
    for y in range(1, height - 1):
        for x in range(1, width - 1):
            inside = x0 <= x < x1 and y0 <= y < y1
            ring = not inside and x0 - 1 <= x <= x1 and y0 - 1 <= y <= y1
            assert (pixels[y * width + x] > 0) == ring, (x, y, pixels[y * width + x])
    border = [pixels[i] for i in range(width)] + [pixels[y * width] for y in range(height)]
    assert set(border) == {255}
