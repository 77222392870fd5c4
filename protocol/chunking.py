"""Split inputs into chunks, one unit each, streaming so large datasets never sit in memory.

Each chunker keeps the bytes exact: concatenating its chunks gives back the input (for files,
unpacking every chunk's tar gives back the files). Lines and records are never split; a
single line or record larger than a byte bound becomes a chunk of its own.
"""

import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from .errors import ProtocolError
from .jobfile import Chunking


def chunk_stream(stream: BinaryIO, chunking: Chunking) -> Iterator[bytes]:
    """Chunks of one input stream by ``chunking.by`` (bytes, lines or records)."""
    if chunking.by == "bytes":
        return chunk_bytes(stream, chunking.size)
    if chunking.by == "lines":
        return _group(iter(stream), chunking.size, chunking.size_unit == "count")
    if chunking.by == "records":
        return _group(records(stream, chunking.separator.encode()), chunking.size, chunking.size_unit == "count")
    raise ProtocolError(f"chunking by {chunking.by} takes a list of files, not one stream")


_BLOCK = 1 << 20


def chunk_bytes(stream: BinaryIO, size: int) -> Iterator[bytes]:
    """Chunks of exactly ``size`` bytes (the last one shorter), read in blocks: a file's
    read(size) allocates ``size`` bytes up front, and a pipe may return fewer."""
    while True:
        pieces: list[bytes] = []
        want = size
        while want and (piece := stream.read(min(want, _BLOCK))):
            pieces.append(piece)
            want -= len(piece)
        if not pieces:
            return
        yield b"".join(pieces)


def records(stream: BinaryIO, separator: bytes) -> Iterator[bytes]:
    """Records that begin with ``separator`` at the start of a line (FASTA's '>'). Anything
    before the first separator stays with the first record; no separator at all is an error."""
    record: list[bytes] = []
    seen = False
    for line in stream:
        if line.startswith(separator):
            if seen:
                yield b"".join(record)
                record = []
            seen = True
        record.append(line)
    if record and not seen:
        raise ProtocolError(
            f"no record separator {separator.decode(errors='replace')!r} found at the start of any line"
        )
    if record:
        yield b"".join(record)


def _group(items: Iterable[bytes], size: int, by_count: bool) -> Iterator[bytes]:
    """Pack whole items into chunks of ``size`` items (by_count) or at most ``size`` bytes."""
    chunk: list[bytes] = []
    weight = 0
    for item in items:
        cost = 1 if by_count else len(item)
        if chunk and weight + cost > size:
            yield b"".join(chunk)
            chunk, weight = [], 0
        chunk.append(item)
        weight += cost
    if chunk:
        yield b"".join(chunk)


def chunk_files(paths: Iterable[str], chunking: Chunking) -> Iterator[bytes]:
    """Group whole files into uncompressed tar archives (reproducible: fixed owner and mtime,
    names relative to the file's own directory), ``size`` files or at most ``size`` bytes each."""
    group: list[str] = []
    weight = 0
    by_count = chunking.size_unit == "count"
    for path in paths:
        cost = 1 if by_count else os.path.getsize(path)
        if group and weight + cost > chunking.size:
            yield _tar(group)
            group, weight = [], 0
        group.append(path)
        weight += cost
    if group:
        yield _tar(group)


def _tar(paths: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size = os.path.getsize(path)
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def chunk_inputs(paths: list[str], chunking: Chunking) -> Iterator[bytes]:
    """All chunks of a job's input files, in order: the files are read one after another, as
    if concatenated, for bytes/lines/records (a chunk never spans two files)."""
    if chunking.by == "files":
        yield from chunk_files(paths, chunking)
        return
    for path in paths:
        with open(path, "rb") as stream:
            yield from chunk_stream(stream, chunking)
