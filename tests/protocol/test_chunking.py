"""Chunkers keep the bytes exact, never split a line or record, and respect their bounds."""

import io
import os
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockercomp.protocol.chunking import chunk_bytes, chunk_files, chunk_inputs, chunk_stream, records
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.jobfile import Chunking

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lines_of(data: bytes) -> list[bytes]:
    """Split on b"\\n" only, keeping it (what iterating a binary stream does)."""
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def records_of(data: bytes, separator: bytes) -> list[bytes]:
    """Records begin at lines that start with the separator; a preamble joins the first."""
    found: list[list[bytes]] = []
    for line in lines_of(data):
        if line.startswith(separator) and found and any(x.startswith(separator) for x in found[-1]):
            found.append([])
        if not found:
            found.append([])
        found[-1].append(line)
    return [b"".join(r) for r in found]


def boundaries(items: list[bytes]) -> set[int]:
    offsets, at = {0}, 0
    for item in items:
        at += len(item)
        offsets.add(at)
    return offsets


def check_grouping(chunks: list[bytes], items: list[bytes], size: int, by_count: bool) -> None:
    """The chunks are the items, in order, whole, packed up to the bound and no further."""
    data = b"".join(items)
    assert b"".join(chunks) == data
    assert all(chunks), "no empty chunk"
    if not items:
        assert chunks == []
        return
    # every chunk ends where an item ends: no item is ever split
    allowed = boundaries(items)
    at, groups = 0, []
    for chunk in chunks:
        assert at + len(chunk) in allowed
        first = sorted(allowed).index(at)
        at += len(chunk)
        last = sorted(allowed).index(at)
        groups.append(items[first:last])
    for i, group in enumerate(groups):
        weight = len(group) if by_count else sum(map(len, group))
        assert weight <= size or len(group) == 1
        if i + 1 < len(groups):  # a chunk is closed only when the next item would not fit
            nxt = 1 if by_count else len(groups[i + 1][0])
            assert weight + nxt > size


# -- bytes ----------------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=3000), st.integers(1, 400))
def test_bytes_chunks_are_exact_and_full(data, size):
    chunks = list(chunk_bytes(io.BytesIO(data), size))
    assert b"".join(chunks) == data
    assert all(len(c) == size for c in chunks[:-1])
    assert not chunks or 0 < len(chunks[-1]) <= size
    assert len(chunks) == -(-len(data) // size)
    assert list(chunk_stream(io.BytesIO(data), Chunking(by="bytes", size=size))) == chunks


class Trickle(io.RawIOBase):
    """A pipe-like stream that returns at most a few bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.at, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.step if n < 0 else min(n, self.step)
        piece = self.data[self.at : self.at + n]
        self.at += len(piece)
        return piece


@FAST
@given(st.binary(max_size=2000), st.integers(1, 300), st.integers(1, 50))
def test_bytes_chunks_are_full_even_from_short_reads(data, size, step):
    chunks = list(chunk_bytes(Trickle(data, step), size))  # type: ignore[arg-type]
    assert b"".join(chunks) == data
    assert all(len(c) == size for c in chunks[:-1])


def test_a_huge_chunk_size_does_not_allocate_it(tmp_path):
    path = tmp_path / "small"
    path.write_bytes(b"hello\n")
    with open(path, "rb") as stream:
        assert list(chunk_bytes(stream, 1 << 40)) == [b"hello\n"]
    with open(path, "rb") as stream:
        assert list(chunk_bytes(stream, 2**70)) == [b"hello\n"]


def test_bytes_chunks_of_a_file_larger_than_a_read_block(tmp_path):
    data = os.urandom(3 * (1 << 20) + 5)
    path = tmp_path / "big"
    path.write_bytes(data)
    with open(path, "rb") as stream:
        chunks = list(chunk_bytes(stream, (1 << 21) + 1))
    assert [len(c) for c in chunks] == [(1 << 21) + 1, len(data) - (1 << 21) - 1]
    assert b"".join(chunks) == data


# -- lines --------------------------------------------------------------------------------------------

LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@st.composite
def texts(draw):
    lines = draw(st.lists(LINE, max_size=40))
    data = b"\n".join(lines)
    if lines and draw(st.booleans()):
        data += b"\n"
    return data


@FAST
@given(texts(), st.integers(1, 200), st.booleans())
def test_lines_are_never_split(data, size, by_count):
    chunking = Chunking(by="lines", size=size, size_unit="count" if by_count else "bytes")
    chunks = list(chunk_stream(io.BytesIO(data), chunking))
    check_grouping(chunks, lines_of(data), size, by_count)


def test_lines_examples():
    data = b"a\nbb\nccc\n"
    count = Chunking(by="lines", size=2, size_unit="count")
    assert list(chunk_stream(io.BytesIO(data), count)) == [b"a\nbb\n", b"ccc\n"]
    by_bytes = Chunking(by="lines", size=5, size_unit="bytes")
    assert list(chunk_stream(io.BytesIO(data), by_bytes)) == [b"a\nbb\n", b"ccc\n"]
    tiny = Chunking(by="lines", size=1, size_unit="bytes")  # every line is larger than the bound
    assert list(chunk_stream(io.BytesIO(data), tiny)) == [b"a\n", b"bb\n", b"ccc\n"]
    assert list(chunk_stream(io.BytesIO(b"no newline"), count)) == [b"no newline"]
    assert list(chunk_stream(io.BytesIO(b"\r\n\r\x0b\n"), count)) == [b"\r\n\r\x0b\n"]  # only \n ends a line


# -- records ------------------------------------------------------------------------------------------

SEPARATORS = st.sampled_from([">", "@", "##", "é", "ID:"])


@st.composite
def record_texts(draw, separator: bytes, with_preamble: bool):
    def body():
        return LINE.filter(lambda b: not b.startswith(separator))

    lines = draw(st.lists(body(), max_size=3)) if with_preamble else []
    for _ in range(draw(st.integers(1, 12))):
        lines.append(separator + draw(LINE))
        lines += draw(st.lists(body(), max_size=4))
    data = b"\n".join(lines)
    if draw(st.booleans()):
        data += b"\n"
    return data


@FAST
@given(st.data(), SEPARATORS, st.integers(1, 300), st.booleans(), st.booleans())
def test_records_are_never_split(data, separator, size, by_count, with_preamble):
    sep = separator.encode()
    text = data.draw(record_texts(sep, with_preamble))
    items = records_of(text, sep)
    assert list(records(io.BytesIO(text), sep)) == items
    chunking = Chunking(by="records", size=size, size_unit="count" if by_count else "bytes", separator=separator)
    chunks = list(chunk_stream(io.BytesIO(text), chunking))
    check_grouping(chunks, items, size, by_count)


def test_records_example():
    fasta = b"; preamble\n>one\nACGT\nAC\n>two\nGG\n>three\n"
    assert list(records(io.BytesIO(fasta), b">")) == [b"; preamble\n>one\nACGT\nAC\n", b">two\nGG\n", b">three\n"]
    chunking = Chunking(by="records", size=2, size_unit="count")
    assert list(chunk_stream(io.BytesIO(fasta), chunking)) == [
        b"; preamble\n>one\nACGT\nAC\n>two\nGG\n",
        b">three\n",
    ]
    # a separator inside a line does not start a record
    assert list(records(io.BytesIO(b">a x>b\n>c\n"), b">")) == [b">a x>b\n", b">c\n"]


@FAST
@given(texts(), SEPARATORS)
def test_records_without_any_separator_are_an_error(text, separator):
    sep = separator.encode()
    text = b"\n".join(b"." + line for line in text.split(b"\n")) if text else b""
    if not text:
        assert list(records(io.BytesIO(text), sep)) == []
        return
    with pytest.raises(ProtocolError, match="no record separator"):
        list(chunk_stream(io.BytesIO(text), Chunking(by="records", size=10, size_unit="count", separator=separator)))


# -- empty input and dispatch -------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["bytes", "lines", "records"])
@pytest.mark.parametrize("unit", ["bytes", "count"])
def test_empty_input_gives_no_chunks(by, unit):
    chunking = Chunking(by=by, size=10, size_unit=unit)
    assert list(chunk_stream(io.BytesIO(b""), chunking)) == []
    assert list(chunk_files([], Chunking(by="files", size=10, size_unit=unit))) == []
    assert list(chunk_inputs([], chunking)) == []


def test_files_mode_needs_a_list_of_files():
    with pytest.raises(ProtocolError, match="list of files"):
        chunk_stream(io.BytesIO(b"x"), Chunking(by="files", size=1, size_unit="count"))


# -- files --------------------------------------------------------------------------------------------

FILE_NAMES = st.text(st.sampled_from("abcxyzAZ09_-.é"), min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


def unpack_all(chunks: list[bytes], into: str) -> list[list[tuple[str, bytes]]]:
    """Extract every tar chunk into its own directory; the (name, bytes) of each, in order."""
    out = []
    for i, chunk in enumerate(chunks):
        target = os.path.join(into, f"chunk{i}")
        with tarfile.open(fileobj=io.BytesIO(chunk)) as tar:
            members = tar.getmembers()
            for m in members:
                assert m.isfile() and (m.uid, m.gid, m.mtime, m.mode) == (0, 0, 0, 0o644)
            tar.extractall(target, filter="data")
        group = []
        for m in members:
            with open(os.path.join(target, m.name), "rb") as f:
                group.append((m.name, f.read()))
        out.append(group)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(FILE_NAMES, st.binary(max_size=300)), max_size=12, unique_by=lambda f: f[0]),
    st.integers(1, 700),
    st.booleans(),
)
def test_files_come_back_whole_and_in_order(files, size, by_count):
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (name, content) in enumerate(files):
            folder = os.path.join(tmp, "in", str(i))  # a folder each: names are relative to it
            os.makedirs(folder)
            paths.append(os.path.join(folder, name))
            with open(paths[-1], "wb") as f:
                f.write(content)
        chunking = Chunking(by="files", size=size, size_unit="count" if by_count else "bytes")
        chunks = list(chunk_files(paths, chunking))
        assert list(chunk_inputs(paths, chunking)) == chunks
        assert list(chunk_files(paths, chunking)) == chunks  # reproducible, byte for byte
        groups = unpack_all(chunks, os.path.join(tmp, "out"))
    assert [f for group in groups for f in group] == files
    assert all(groups)
    for i, group in enumerate(groups):
        weight = len(group) if by_count else sum(len(c) for _, c in group)
        assert weight <= size or len(group) == 1
        if i + 1 < len(groups):
            nxt = 1 if by_count else len(groups[i + 1][0][1])
            assert weight + nxt > size


def test_files_example(tmp_path):
    for name, content in (("a.txt", b"A" * 10), ("b.txt", b""), ("c.txt", b"C" * 30)):
        (tmp_path / name).write_bytes(content)
    paths = [str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt")]
    by_count = list(chunk_files(paths, Chunking(by="files", size=2, size_unit="count")))
    assert [[n for n, _ in g] for g in unpack_all(by_count, str(tmp_path / "x"))] == [["a.txt", "b.txt"], ["c.txt"]]
    by_bytes = list(chunk_files(paths, Chunking(by="files", size=10, size_unit="bytes")))
    assert [[n for n, _ in g] for g in unpack_all(by_bytes, str(tmp_path / "y"))] == [["a.txt", "b.txt"], ["c.txt"]]


# -- several input files ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts(), max_size=5), st.sampled_from(["bytes", "lines"]), st.integers(1, 100), st.booleans())
def test_a_chunk_never_spans_two_inputs(contents, by, size, by_count):
    unit = "count" if by_count and by != "bytes" else "bytes"
    chunking = Chunking(by=by, size=size, size_unit=unit)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, content in enumerate(contents):
            paths.append(os.path.join(tmp, f"in{i}"))
            with open(paths[-1], "wb") as f:
                f.write(content)
        chunks = list(chunk_inputs(paths, chunking))
    expected = [c for content in contents for c in chunk_stream(io.BytesIO(content), chunking)]
    assert chunks == expected
    assert b"".join(chunks) == b"".join(contents)
