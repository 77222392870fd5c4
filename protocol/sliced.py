"""A big body decoded a slice at a time: the same value (or the same refusal, by leaving it
to codec.decode) as decoding it whole, but as a generator that yields between slices, so the
master can serve other requests meanwhile (server/scientist.py drives it with its Pacer)."""

import bisect
import codecs
import itertools
import json
import re
from collections.abc import Generator
from typing import Any

import msgpack

from . import codec

ITEMS = 100  # array items decoded between two steps


class Unexpected(Exception):
    """What the sliced decoder leaves to codec.decode: not an object, or not valid at all."""


def decode(pieces: list[bytes], ctype: str) -> Generator[None, None, dict[str, Any]]:
    """A body, in the pieces it arrived in, decoded as codec.decode decodes it (JSON or msgpack),
    yielding every ITEMS array items or body piece: whoever drives it may let other work run
    between two steps (json.loads alone holds a thread 0.3 s for a million chunk hashes); its
    value is the object. Unexpected for anything but a well-formed object: codec.decode is left
    to answer that, with the same value or error as ever."""
    try:
        text = (yield from _text(pieces)) if ctype != codec.MSGPACK else ""
        members = _msgpack_members(_Pieces(pieces)) if ctype == codec.MSGPACK else _json_members(text)
        del text  # the generator has it
        return (yield from members)
    except Unexpected:
        raise
    except Exception as exc:  # malformed, most likely: codec.decode says how
        raise Unexpected from exc


_WS = re.compile(r"[ \t\n\r]*")
_JSON = json.JSONDecoder()
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # codec.load_json looks into such strings itself
_ARRAYS = frozenset({*range(0x90, 0xA0), 0xDC, 0xDD})  # the first byte of a msgpack array


def _text(pieces: list[bytes]) -> Generator[None, None, str]:
    """A JSON body's text, decoded as json.loads decodes bytes (encoding detected, surrogates
    passed), a piece at a time (and then joined: 25 ms for 35 MB, the one step that big)."""
    head = b"".join(pieces[:4])[:4]  # json.detect_encoding looks at the first four bytes
    decoder = codecs.getincrementaldecoder(json.detect_encoding(head))("surrogatepass")
    texts, tail = [], ""
    for n in range(len(pieces) + 1):
        text = decoder.decode(pieces[n], final=False) if n < len(pieces) else decoder.decode(b"", final=True)
        if _SURROGATE_ESCAPE.search(tail + text[:8]) or _SURROGATE_ESCAPE.search(text):
            raise Unexpected
        texts.append(text)
        tail = (tail + text)[-8:]
        yield
    return "".join(texts)


class _Items:
    """An array being decoded, kept as tuples of ITEMS items until it is whole: a full garbage
    collection walks a list item by item (10 ms for a million), a tuple of strings never."""

    def __init__(self) -> None:
        self._done: list[tuple[Any, ...]] = []
        self._last: list[Any] = []

    def add(self, item: Any) -> bool:
        """Add an item; True when that made ITEMS more (a moment to let the loop run)."""
        self._last.append(item)
        if len(self._last) < ITEMS:
            return False
        self._done.append(tuple(self._last))
        self._last = []
        return True

    def whole(self) -> Generator[None, None, list[Any]]:
        """The array, put together a slice at a time."""
        whole: list[Any] = []
        for n, done in enumerate(self._done, 1):
            whole += done
            if n % ITEMS == 0:
                yield
        return whole + self._last


def _json_members(text: str) -> Generator[None, None, dict[str, Any]]:
    """A JSON object as json.loads reads it, member by member, and the items of a member that
    is an array one at a time, pausing (yielding) every ITEMS items."""
    ws, value = _skip, _JSON.raw_decode
    i = ws(text, 0)
    if text[i : i + 1] != "{":
        raise Unexpected
    obj: dict[str, Any] = {}
    i = ws(text, i + 1)
    mark = text[i : i + 1]
    if mark == "}":
        i = ws(text, i + 1)
    while mark != "}":
        if text[i : i + 1] != '"':
            raise Unexpected
        key, i = value(text, i)
        i = ws(text, i)
        if text[i : i + 1] != ":":
            raise Unexpected
        i = ws(text, i + 1)
        if text[i : i + 1] == "[":
            items = _Items()
            i = ws(text, i + 1)
            mark = text[i : i + 1]
            if mark == "]":
                i += 1
            while mark != "]":
                item, i = value(text, i)
                if items.add(item):
                    yield
                i = ws(text, i)
                mark, i = text[i : i + 1], ws(text, i + 1)
                if mark not in (",", "]"):
                    raise Unexpected
            obj[key] = yield from items.whole()
        else:
            obj[key], i = value(text, i)
        i = ws(text, i)
        mark, i = text[i : i + 1], ws(text, i + 1)
        if mark not in (",", "}"):
            raise Unexpected
    if i != len(text):
        raise Unexpected
    return obj


def _skip(text: str, i: int) -> int:
    """The index of the first character from ``i`` on that is no JSON whitespace."""
    match = _WS.match(text, i)
    return match.end() if match else i


class _Pieces:
    """A body's pieces as the file msgpack.Unpacker reads from, and which byte is where."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces, self._i, self._at = pieces, 0, 0
        self._starts = list(itertools.accumulate((len(p) for p in pieces), initial=0))
        self.size = self._starts[-1]

    def read(self, n: int) -> bytes:
        while self._i < len(self._pieces):
            piece = self._pieces[self._i]
            if self._at < len(piece):
                out = piece[self._at : self._at + n]
                self._at += len(out)
                return out
            self._i, self._at = self._i + 1, 0
        return b""

    def byte(self, offset: int) -> int:
        i = bisect.bisect_right(self._starts, offset) - 1
        return self._pieces[i][offset - self._starts[i]]


def _msgpack_members(data: _Pieces) -> Generator[None, None, dict[str, Any]]:
    """A msgpack map as codec.unpack reads it, entry by entry, and the items of an entry that is
    an array one at a time, pausing (yielding) every ITEMS items."""
    unpacker = msgpack.Unpacker(data, raw=False, strict_map_key=True, max_buffer_size=max(data.size, 1))
    obj: dict[str, Any] = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        if not isinstance(key, str):
            raise Unexpected
        if data.byte(unpacker.tell()) in _ARRAYS:
            items = _Items()
            for _ in range(unpacker.read_array_header()):
                if items.add(unpacker.unpack()):
                    yield
            obj[key] = yield from items.whole()
        else:
            obj[key] = unpacker.unpack()
    if unpacker.tell() != data.size:
        raise Unexpected
    return obj
