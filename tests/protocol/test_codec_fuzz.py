"""Hostile bytes and objects into the codec, every message and the job file: all that ever comes
out is a value, a message, a JobSpec or a ProtocolError; and every valid message survives
encode and decode, in msgpack's every legal form.

The first half is a toolkit the HTTP fuzzers share (tests/api/test_client_protocol_fuzz.py
sends its output to a real master, tests/client/test_master_fuzz.py answers a real daemon
session with it): ``write`` emits any msgpack, legal or not, each value in a random one of its
legal forms; ``hostile`` gives a value aimed at a field of a given type; ``mutate`` changes a
message's wire form where its schema says it matters; ``mutate_bytes`` works on the bytes."""

import copy
import dataclasses
import functools
import json
import math
import random
import struct
import types
import typing
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, get_type_hints

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.jobfile import JobSpec, parse_jobfile
from dockercomp.protocol.limits import INT64_MAX, INT64_MIN
from dockercomp.protocol.messages import DEFAULT_CAP, Cap, LeaseRequest, Message, ResultBatch, ResultReport

from .test_jobfile import jobfiles
from .test_messages import SAMPLES, all_messages

# -- a msgpack writer that can say anything ----------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Bytes written as they are in place of a value: what no packer would make."""

    data: bytes


@dataclass(frozen=True)
class Pairs:
    """A map written with exactly these (key, value) pairs: duplicate keys, keys of any type."""

    items: tuple[tuple[Any, Any], ...]


_WIDE = {
    "str": ((b"\xd9", ">B"), (b"\xda", ">H"), (b"\xdb", ">I")),
    "bin": ((b"\xc4", ">B"), (b"\xc5", ">H"), (b"\xc6", ">I")),
    "array": ((None, ">B"), (b"\xdc", ">H"), (b"\xdd", ">I")),
    "map": ((None, ">B"), (b"\xde", ">H"), (b"\xdf", ">I")),
}
_FIX = {"str": (0xA0, 32), "array": (0x90, 16), "map": (0x80, 16)}
_INTS = (
    (b"\xcc", ">B"), (b"\xcd", ">H"), (b"\xce", ">I"), (b"\xcf", ">Q"),
    (b"\xd0", ">b"), (b"\xd1", ">h"), (b"\xd2", ">i"), (b"\xd3", ">q"),
)  # fmt: skip


def _pick(forms: list[bytes], r: random.Random | None) -> bytes:
    return forms[0] if r is None else r.choice(forms)


def _head(kind: str, n: int, r: random.Random | None) -> bytes:
    forms = []
    if kind in _FIX and n < _FIX[kind][1]:
        forms.append(bytes([_FIX[kind][0] | n]))
    for code, fmt in _WIDE[kind]:
        if code is not None and n < 1 << (8 * struct.calcsize(fmt)):
            forms.append(code + struct.pack(fmt, n))
    return _pick(forms, r)


def _int(n: int, r: random.Random | None) -> bytes:
    forms = [struct.pack(">b" if n < 0 else ">B", n)] if -32 <= n < 128 else []
    for code, fmt in _INTS:
        bits = 8 * struct.calcsize(fmt)
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt.islower() else (0, (1 << bits) - 1)
        if low <= n <= high:
            forms.append(code + struct.pack(fmt, n))
    if not forms:
        raise ValueError(f"msgpack has no integer of {n.bit_length()} bits")
    return _pick(forms, r)


def _float(x: float, r: random.Random | None) -> bytes:
    forms = [b"\xcb" + struct.pack(">d", x)]
    try:
        single = struct.pack(">f", x)
    except OverflowError:
        single = b""
    if single and (x != x or struct.unpack(">f", single)[0] == x):  # float32 holds it exactly
        forms.append(b"\xca" + single)
    return _pick(forms, r)


def _ext(code: int, data: bytes, r: random.Random | None) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    forms = [bytes([fixed[len(data)]]) + struct.pack(">b", code)] if len(data) in fixed else []
    for head, fmt in ((b"\xc7", ">B"), (b"\xc8", ">H"), (b"\xc9", ">I")):
        if len(data) < 1 << (8 * struct.calcsize(fmt)):
            forms.append(head + struct.pack(fmt, len(data)) + struct.pack(">b", code))
    return _pick(forms, r) + data


def write(obj: Any, r: random.Random | None = None) -> bytes:
    """msgpack for ``obj`` (Raw and Pairs as they say); with ``r``, each value in a random one of
    its legal forms: an int in a wider type than it needs, a float32 for a float it holds
    exactly, a str16 header for a short string, an array32 for an empty list."""
    out = bytearray()
    _write(obj, r, out)
    return bytes(out)


def _write(obj: Any, r: random.Random | None, out: bytearray) -> None:
    if isinstance(obj, Raw):
        out += obj.data
    elif obj is None:
        out += b"\xc0"
    elif obj is True or obj is False:
        out += b"\xc3" if obj else b"\xc2"
    elif isinstance(obj, int):
        out += _int(obj, r)
    elif isinstance(obj, float):
        out += _float(obj, r)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")  # a lone surrogate becomes the invalid UTF-8 it would be
        out += _head("str", len(data), r) + data
    elif isinstance(obj, bytes):
        out += _head("bin", len(obj), r) + obj
    elif isinstance(obj, msgpack.ExtType):
        out += _ext(obj.code, obj.data, r)
    elif isinstance(obj, msgpack.Timestamp):
        out += _ext(-1, obj.to_bytes(), r)
    elif isinstance(obj, Pairs | dict):
        items = obj.items if isinstance(obj, Pairs) else tuple(obj.items())
        out += _head("map", len(items), r)
        for key, value in items:
            _write(key, r, out)
            _write(value, r, out)
    elif isinstance(obj, list | tuple):
        out += _head("array", len(obj), r)
        for item in obj:
            _write(item, r, out)
    else:
        raise TypeError(f"cannot write {type(obj).__name__}")


# -- hostile values ----------------------------------------------------------------------------------

# nesting around the decoder's own limit (1024 levels) and Python's (1000 frames)
DEPTHS = (2, 50, 500, 900, 960, 990, 1000, 1010, 1020, 1023, 1024, 1100, 5000)
FORGED_LINE = "\n2026-01-01 00:00:00,000 CRITICAL dockercomp: a line forged by a message"
INTS = (0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31), 2**32, 2**53 + 1,
        INT64_MAX, INT64_MIN, 2**63, 2**64 - 1)  # fmt: skip
FLOATS = (0.0, -0.0, 0.5, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf)
RAW_SCALARS = (
    Raw(b"\xca\x7f\xc0\x00\x00"),  # float32 NaN
    Raw(b"\xca\xff\x80\x00\x00"),  # float32 -inf
    Raw(b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x01"),  # a signalling NaN
    Raw(b"\xcb\xff\xf8\x00\x00\x00\x00\x00\x00"),  # a negative NaN
    Raw(b"\xcf" + b"\xff" * 8),  # uint64 max
    Raw(b"\xd3\x80" + b"\x00" * 7),  # int64 min
    Raw(b"\xd3\x00\x00\x00\x00\x00\x00\x00\x05"),  # 5 in eight bytes
    Raw(b"\xd6\xff\x00\x00\x00\x01"),  # a timestamp (ext -1)
    Raw(b"\xc7\x0c\xff" + b"\x00" * 4 + b"\xff" * 8),  # a 96-bit timestamp before year 1
)
BROKEN = (
    Raw(b"\xa3\xed\xa0\x80"),  # U+D800 as UTF-8: a surrogate, which is no text
    Raw(b"\xa2\xc0\x80"),  # an overlong NUL
    Raw(b"\xa1\xff"),
    Raw(b"\xc1"),  # the byte msgpack never uses
    Raw(b"\xd9\x05ab"),  # a str8 shorter than it says
    Raw(b"\xdd\xff\xff\xff\xff"),  # an array of four billion entries, none there
    Raw(b"\xdf\x7f\xff\xff\xff\xc0"),
    Raw(b"\xc9\xff\xff\xff\xf0\x05"),  # an ext32 longer than any body
    Raw(b"\xc7\x03\xff\x00\x00\x00"),  # a timestamp of three bytes
    Raw(b"\xd7\xff" + b"\xff" * 8),  # a timestamp with 2**30 - 1 nanoseconds too many
    Raw(b"\x81\x01\x02"),  # a map with an integer key
    Raw(b"\x81\x90\x01"),  # a map with a list for a key
    Raw(b"\x81\xc0\x01"),
)


def text(r: random.Random, cap: Cap = DEFAULT_CAP) -> str:
    """A string that tests something: at and past its cap, in one to four UTF-8 bytes a
    character, with control characters, escape codes, a forged log line, a lone surrogate."""
    return r.choice(
        [
            lambda: "", lambda: "x", lambda: "é", lambda: "日本語", lambda: "\U0001f600", lambda: "\x00",
            lambda: "\x1b[2J\x1b[31mred", lambda: FORGED_LINE, lambda: "\u202eevil\u2066", lambda: "a\r\nb\tc",
            lambda: "\ud800", lambda: "x\udfffy", lambda: "a" * cap.length, lambda: "a" * (cap.length + 1),
            lambda: "é" * min(cap.length, 5000), lambda: "\U0001f600" * min(cap.length, 3000),
            lambda: "".join(chr(r.randint(1, 0x10FFFF)) for _ in range(r.randint(1, 12))),
            lambda: f"{r.getrandbits(128):032x}", lambda: "0" * 32, lambda: "succeeded", lambda: "errored",
            lambda: "oom", lambda: "map", lambda: "reduce", lambda: "abort", lambda: "NaN", lambda: "-1",
            lambda: "9" * 40, lambda: "1e999", lambda: "/api/v1/blobs/" + "0" * 32, lambda: "//evil.example/x",
        ]
    )()  # fmt: skip


def deep(depth: int, leaf: Any = None) -> Any:
    """``leaf`` in ``depth`` nested lists (a Python object: no decoder limits its depth)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested(r: random.Random, depth: int | None = None) -> Raw:
    """A value nested ``depth`` levels deep, as msgpack: lists, maps or both in turn."""
    depth = depth or r.choice(DEPTHS)
    kind = r.random()
    if kind < 0.5:
        return Raw(b"\x91" * depth + b"\xc0")
    if kind < 0.8:
        return Raw(b"\x81\xa1k" * depth + b"\xc0")
    return Raw(b"\x91\x81\xa1k" * (depth // 2) + b"\xa3oom")


def scalar(r: random.Random) -> Any:
    kind = r.random()
    if kind < 0.25:
        return r.choice(INTS)
    if kind < 0.4:
        return r.choice(FLOATS)
    if kind < 0.5:
        return r.choice([None, True, False])
    if kind < 0.7:
        return text(r)
    if kind < 0.8:
        return r.choice([b"", b"\x00\xff", bytes(r.getrandbits(8) for _ in range(r.randint(1, 64)))])
    if kind < 0.88:  # an extension type: msgpack's ExtType takes 0-127, the decoder reserves the rest
        code, data = r.randint(-128, 127), bytes(r.randrange(256) for _ in range(r.choice([0, 1, 2, 4, 8, 16, 17])))
        return msgpack.ExtType(code, data) if code >= 0 else Raw(_ext(code, data, r))
    if kind < 0.96:
        return r.choice(RAW_SCALARS)
    return r.choice(BROKEN)


def any_value(r: random.Random, depth: int = 0) -> Any:
    """Anything msgpack can say (and some it cannot), a few levels deep."""
    kind = r.random()
    if depth > 3 or kind < 0.6:
        return scalar(r)
    if kind < 0.75:
        return [any_value(r, depth + 1) for _ in range(r.randint(0, 4))]
    if kind < 0.9:
        return {text(r): any_value(r, depth + 1) for _ in range(r.randint(0, 4))}
    if kind < 0.95:
        return Pairs(tuple((r.choice([text(r), b"k", 1, None, 1.5]), any_value(r, depth + 1)) for _ in range(3)))
    return nested(r)


def _optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0], True
    return hint, False


def hostile(hint: Any, cap: Cap, r: random.Random, template: Any = None) -> Any:
    """A value aimed at a field of type ``hint`` bounded by ``cap``: of another type, at or past
    its bounds, at the ends of its range, nested too deeply, or just anything."""
    hint, optional = _optional(hint)
    if r.random() < 0.2:
        return any_value(r)
    if optional and r.random() < 0.1:
        return None
    if r.random() < 0.05:
        return nested(r)
    origin = typing.get_origin(hint)
    if hint is int:
        return r.choice([True, False, 1.0, 0.0, "7", b"7", None, math.nan, *INTS, *RAW_SCALARS[4:7]])
    if hint is float:
        return r.choice([True, "1.0", None, *FLOATS, *INTS, *RAW_SCALARS[:4]])
    if hint is str:
        return r.choice([text(r, cap), text(r, cap), text(r, cap), b"x", 0, None, ["x"], Raw(b"\xa3\xed\xa0\x80"),
                         Raw(b"\xc4\x01x"), msgpack.ExtType(1, b"x")])  # fmt: skip
    if hint is bool:
        return r.choice([0, 1, "true", None, b"\x01", 1.0, []])
    if hint is bytes:
        return r.choice(["text", [1, 2], None, b"", bytes(r.randint(0, 4096)), 0])
    if origin is list:
        (item,) = typing.get_args(hint)
        element = template[0] if isinstance(template, list) and template else None
        return r.choice(
            [
                lambda: [],
                lambda: [hostile(item, cap, r, element) for _ in range(r.randint(1, 3))],
                lambda: [None] * (cap.items + 1),  # one entry past the cap, of the cheapest kind
                lambda: [element] * min(cap.items, 2000) if element is not None else [],
                lambda: {"0": element},
                lambda: text(r),
                lambda: deep(r.choice([3, 30])),
            ]
        )()
    if origin is dict:
        _, value_t = typing.get_args(hint)
        return r.choice(
            [
                lambda: {},
                lambda: {text(r, Cap(length=cap.keys)): hostile(value_t, cap, r)},
                lambda: Pairs(((b"KEY", "x"),)),  # a bin key: the decoder takes it, the field must not
                lambda: Pairs(((1, "x"),)),  # an integer key: the decoder refuses it
                lambda: Pairs((("A", "x"), ("A", hostile(value_t, cap, r)))),  # one key twice
                lambda: {f"K{i}": "v" for i in range(cap.items + 1)},
                lambda: ["A", "x"],
                lambda: text(r),
            ]
        )()
    if isinstance(hint, type) and issubclass(hint, Message):
        if isinstance(template, dict) and r.random() < 0.7:
            return mutate(hint, template, r, r.randint(1, 2))
        return r.choice([[], "x", 0, None, {}, {"x": 1}, Pairs(((b"a", 1),))])
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        member = r.choice(list(hint)).value
        return r.choice([member.upper(), f" {member}", f"{member}\x00", member[:-1], "", "x" * 300, 5, [member],
                         member.encode(), deep(10, member), nested(r, 999), "succeeded", "oom", "abort",
                         "map"])  # fmt: skip
    return any_value(r)


# -- structure-aware mutation -------------------------------------------------------------------------

Slot = tuple[Any, Any, Any, Cap]  # (container, key or index, the type of what is there, its cap)


def slots(cls: type[Message], data: Any) -> list[Slot]:
    """Every place in the wire form ``data`` of ``cls`` where a value of a known type goes:
    each field (present or not) and, inside the fields, each entry of its lists and maps."""
    found: list[Slot] = []
    if isinstance(data, dict):
        _fields(cls, data, found)
    return found


@functools.cache
def schema(cls: type[Message]) -> tuple[tuple[str, Any, Cap, bool], ...]:
    """(name, type, cap, required) of each field of ``cls``."""
    hints = get_type_hints(cls)
    return tuple(
        (f.name, hints[f.name], cls.caps.get(f.name, DEFAULT_CAP),
         f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )  # fmt: skip


def _fields(cls: type[Message], data: dict[Any, Any], found: list[Slot]) -> None:
    for name, hint, cap, _ in schema(cls):
        found.append((data, name, hint, cap))
        if name in data:
            _inside(data[name], hint, cap, found)


def _inside(value: Any, hint: Any, cap: Cap, found: list[Slot]) -> None:
    hint, _ = _optional(hint)
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Message) and isinstance(value, dict):
        _fields(hint, value, found)
    elif origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        for i, entry in enumerate(value):
            found.append((value, i, item, cap))
            _inside(entry, item, cap, found)
    elif origin is dict and isinstance(value, dict):
        _, value_t = typing.get_args(hint)
        for key, entry in value.items():
            found.append((value, key, value_t, cap))
            _inside(entry, value_t, cap, found)


def mutate(cls: type[Message], wire: dict[str, Any], r: random.Random, times: int = 1) -> Any:
    """``wire`` (a valid wire form of ``cls``) changed ``times`` times where its schema says it
    matters: a field of another type or at its bounds, a field left out, a field nobody knows,
    a key twice, an entry too many, nesting past every limit, or no map at all."""
    tree: Any = copy.deepcopy(wire)
    for _ in range(times):
        places = slots(cls, tree)
        if not places:
            break
        parent, key, hint, cap = r.choice(places)
        present = key in parent if isinstance(parent, dict) else True
        op = r.random()
        if op < 0.62:
            parent[key] = hostile(hint, cap, r, parent.get(key) if isinstance(parent, dict) else parent[key])
        elif op < 0.72 and isinstance(parent, dict) and present:
            del parent[key]
        elif op < 0.8:
            container = parent if isinstance(parent, dict) else tree
            container[text(r)] = any_value(r)
        elif op < 0.85:
            parent[key] = nested(r)
        elif op < 0.9 and isinstance(parent, list):
            parent.extend([copy.deepcopy(parent[key])] * r.randint(1, 5))
        elif op < 0.95:
            dicts = [(p, k) for p, k, _, _ in places if isinstance(p, dict) and isinstance(p.get(k), dict)]
            if dicts:
                p, k = r.choice(dicts)
                p[k] = Pairs((*p[k].items(), (r.choice([*p[k], "x"]), any_value(r))))
            else:
                tree = Pairs((*tree.items(), (r.choice([*tree, "x"]), any_value(r))))
            return tree  # a Pairs is written as it is: no further changes inside it
        else:
            return r.choice([[tree], None, "x", 7, b"map", msgpack.ExtType(5, b"x"), [], nested(r)])
    return tree


def mutate_bytes(data: bytes, r: random.Random, other: bytes = b"") -> bytes:
    """``data`` changed as bytes: cut short, bits flipped, bytes put in, taken out, repeated or
    replaced by a header that announces more than there is, garbage after it, spliced."""
    if not data:
        return bytes(r.getrandbits(8) for _ in range(r.randint(1, 16)))
    out = bytearray(data)
    op = r.random()
    if op < 0.2:
        return bytes(out[: r.randrange(len(out))])
    if op < 0.4:
        for _ in range(r.randint(1, 8)):
            out[r.randrange(len(out))] ^= 1 << r.randrange(8)
    elif op < 0.5:
        i = r.randrange(len(out) + 1)
        out[i:i] = bytes(r.getrandbits(8) for _ in range(r.randint(1, 8)))
    elif op < 0.6:
        i = r.randrange(len(out))
        del out[i : i + r.randint(1, 16)]
    elif op < 0.65:
        i = r.randrange(len(out))
        out[i:i] = out[i : i + r.randint(1, 64)] * r.randint(2, 20)
    elif op < 0.8:
        i = r.randrange(len(out))
        head = r.choice([0xC1, 0xDD, 0xDF, 0xDB, 0xC6, 0xC9, 0xD9, 0xCF, 0xD3, 0xCA, 0xCB, 0xD4, 0xC7, 0x9F, 0x8F,
                         0xBF, 0xFF, 0x00, 0xC0, 0xC2])  # fmt: skip
        out[i : i + 1] = bytes([head]) + (b"\xff" * r.choice([0, 1, 2, 4]))
    elif op < 0.9:
        out += r.choice([b"\x00", b"\xc0", b"\x81\xa1a\x01", bytes(r.getrandbits(8) for _ in range(8))])
    else:
        tail = other or data
        out = out[: r.randrange(len(out) + 1)] + tail[r.randrange(len(tail) + 1) :]
    return bytes(out)


def hostile_body(cls: type[Message], wire: dict[str, Any], r: random.Random) -> bytes:
    """One hostile msgpack body for a message of ``cls`` whose valid wire form is ``wire``."""
    kind = r.random()
    if kind < 0.6:
        return write(mutate(cls, wire, r, r.randint(1, 3)), r)
    if kind < 0.7:
        return write(wire, r)  # valid, in unusual forms
    if kind < 0.9:
        valid = write(wire if r.random() < 0.5 else mutate(cls, wire, r), r)
        return mutate_bytes(valid, r, write(wire))
    if kind < 0.95:
        return write(any_value(r), r)
    return bytes(r.getrandbits(8) for _ in range(r.randint(0, 200)))


def judge(cls: type[Message], body: bytes) -> Message | ProtocolError:
    """What the protocol makes of ``body`` as a ``cls``: the message, or the ProtocolError
    refusing it. Any other exception is a bug and propagates."""
    try:
        return cls.from_wire(codec.unpack(body))
    except ProtocolError as exc:
        return exc


# -- hypothesis: the codec and every message ---------------------------------------------------------

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=5),  # a slow example on a busy machine is not a bug; a quadratic one is
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PER_MESSAGE = settings(FUZZ, max_examples=100)
CLASSES = [pytest.param(cls, id=cls.__name__) for cls in all_messages()]

KEYS = st.text(max_size=12) | st.binary(max_size=4)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(st.characters() | st.characters(categories=["Cs"]), max_size=30)  # lone surrogates too
    | st.binary(max_size=30)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=17))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
    | st.sampled_from([deep(d) for d in (100, 990, 1000, 1020)])
)
DECODED = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)  # fmt: skip


def field_values(cls: type[Message]) -> st.SearchStrategy[dict[Any, Any]]:
    """A complete valid wire form of ``cls`` with any of its fields replaced by anything."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return st.fixed_dictionaries({}, optional=dict.fromkeys(names, DECODED)).map(
        lambda changes: copy.deepcopy(SAMPLES[cls]) | changes
    )


def _from_wire(cls: type[Message], data: Any) -> Message | ProtocolError:
    try:
        return cls.from_wire(data)
    except ProtocolError as exc:
        assert str(exc) and str(exc).isprintable(), f"a refusal must say what is wrong, in one line: {exc!r}"
        return exc


@pytest.mark.parametrize("cls", CLASSES)
@PER_MESSAGE
@given(data=st.data())
def test_anything_decoded_or_any_field_replaced_by_it_is_a_message_or_a_protocol_error(cls, data):
    wire = data.draw(st.one_of(DECODED, field_values(cls)))
    result = _from_wire(cls, wire)
    if isinstance(result, Message):  # taken: it is a message like any other
        assert isinstance(result, cls)
        assert cls.from_wire(codec.unpack(codec.pack(result.to_wire()))) == result


@pytest.mark.parametrize("cls", CLASSES)
@settings(PER_MESSAGE, max_examples=300)
@given(r=st.randoms(use_true_random=False))
def test_mutated_msgpack_of_every_message_is_a_message_or_a_protocol_error(cls, r):
    body = hostile_body(cls, SAMPLES[cls], r)
    result = judge(cls, body)
    if isinstance(result, ProtocolError):
        message = str(result)
        assert message and not message.endswith(": "), f"a refusal must say what is wrong: {message!r}"
        assert message.isprintable(), f"a refusal must be one printable line: {message!r}"
    else:
        assert cls.from_wire(codec.unpack(codec.pack(result.to_wire()))) == result


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_into_every_message(data):
    for cls in all_messages():
        assert isinstance(judge(cls, data), Message | ProtocolError)


# -- every valid message round-trips ---------------------------------------------------------------


def _sometimes(usual: st.SearchStrategy[Any], edge: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``edge`` one time in eight (an edge is costly: a list of 10,000 entries, a string of 128 KiB)."""
    return st.integers(0, 7).flatmap(lambda n: edge if n == 7 else usual)  # 0, the simplest, is the usual


def valid(hint: Any, cap: Cap, edges: bool = True) -> st.SearchStrategy[Any]:
    """Valid wire values of a field: across the whole range, and (``edges``) at the field's caps."""
    hint, optional = _optional(hint)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        strategy = st.lists(valid(item, cap, edges), max_size=min(3, cap.items))
        message_items = isinstance(item, type) and issubclass(item, Message)
        if edges and not message_items and cap.items <= 10_000:  # every entry it may have (one, repeated)
            strategy = _sometimes(strategy, valid(item, cap, edges=False).map(lambda v: [v] * cap.items))
    elif origin is dict:
        _, value_t = typing.get_args(hint)
        keys = st.text(max_size=12) | st.just("K" * cap.keys)
        strategy = st.dictionaries(keys, valid(value_t, cap, edges), max_size=3)
    elif isinstance(hint, type) and issubclass(hint, Message):
        strategy = wire_forms(hint)
    elif isinstance(hint, type) and issubclass(hint, StrEnum):
        strategy = st.sampled_from([m.value for m in hint])
    elif hint is str:
        strategy = st.text(max_size=20)
        if edges:  # as long as it may be, in characters of one to four UTF-8 bytes
            strategy = _sometimes(strategy, st.characters(codec="utf-8").map(lambda c: c * cap.length))
    elif hint is int:
        strategy = st.integers(INT64_MIN, INT64_MAX) | st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])
    elif hint is float:
        strategy = st.floats(allow_nan=False) | st.integers(INT64_MIN, INT64_MAX)  # ints are taken for floats
    elif hint is bool:
        strategy = st.booleans()
    elif hint is bytes:
        strategy = st.binary(max_size=64)
    else:
        raise AssertionError(f"no strategy for {hint!r}")
    return st.none() | strategy if optional else strategy


@st.composite
def wire_forms(draw: st.DrawFn, cls: type[Message]) -> dict[str, Any]:
    """A valid wire form of ``cls``: its required fields and any of the others."""
    wire = {}
    for name, hint, cap, required in schema(cls):
        if required or draw(st.booleans()):
            wire[name] = draw(valid(hint, cap))
    if cls is ResultReport:  # the rules across its fields
        if wire["status"] == "succeeded" and wire.get("output_hash") is None:
            wire["output_hash"] = "0" * 32
        if wire["status"] == "errored" and wire.get("error") is None:
            wire["error"] = "oom"
    return wire


def _has_bytes(value: Any) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    return isinstance(value, list) and any(_has_bytes(v) for v in value)


@pytest.mark.parametrize("cls", CLASSES)
@settings(PER_MESSAGE, max_examples=75)
@given(data=st.data(), r=st.randoms(use_true_random=False))
def test_every_valid_message_round_trips_in_every_form(cls, data, r):
    message = cls.from_wire(data.draw(wire_forms(cls)))  # a valid wire form is taken
    wire = message.to_wire()
    assert cls.from_wire(wire) == message
    assert cls.from_wire(codec.unpack(codec.pack(wire))) == message
    odd = write(wire, r)  # the same message in other legal forms: wider ints, float32, str16 headers
    assert codec.unpack(odd) == codec.unpack(codec.pack(wire))
    assert cls.from_wire(codec.unpack(odd)) == message
    if not _has_bytes(wire):  # JSON has no bytes
        assert cls.from_wire(codec.load_json(codec.dump_json(wire))) == message


def test_the_writer_writes_what_msgpack_reads():
    value = {"a": [1, -1, 2**64 - 1, INT64_MIN, 0.5, "é" * 40, b"\x00" * 300, None, True], "b": {}}
    assert codec.unpack(write(value)) == value
    rng = random.Random(1)
    for _ in range(200):
        assert codec.unpack(write(value, rng)) == value
    assert codec.unpack(write(Pairs((("a", 1), ("a", 2))))) == {"a": 2}  # the last of a key twice wins
    with pytest.raises(ProtocolError):
        codec.unpack(write({"a": Raw(b"\xc1")}))


# -- regressions: nesting past the recursion limit, and names that are not text -----------------------


NESTED = [
    pytest.param(cls, i, depth, id=f"{cls.__name__}#{i}.{key}-{depth}")
    for cls in all_messages()
    for i, (_, key, _, _) in enumerate(slots(cls, SAMPLES[cls]))
    for depth in (990, 1000, 1100)
]


@pytest.mark.parametrize(("cls", "place", "depth"), NESTED)
def test_a_value_nested_past_the_recursion_limit_anywhere_is_a_protocol_error(cls, place, depth):
    wire = copy.deepcopy(SAMPLES[cls])
    parent, key, _, _ = slots(cls, wire)[place]
    parent[key] = deep(depth, "oom")
    with pytest.raises(ProtocolError) as raised:
        cls.from_wire(wire)
    assert len(str(raised.value)) < 500


def test_an_enum_field_nested_deeply_names_its_type_not_its_contents():
    with pytest.raises(ProtocolError, match=r"^error must be one of .*, got list$"):
        ResultReport.from_wire({"attempt": "a", "status": "errored", "error": deep(1000, "oom")})
    body = b"\x81\xa7results\x91\x83\xa7attempt\xa1a\xa6status\xa7errored\xa5error" + b"\x91" * 1000 + b"\xc0"
    with pytest.raises(ProtocolError, match=r"results\[0\]\.error must be one of .*, got list"):
        ResultBatch.from_wire(codec.unpack(body))


@pytest.mark.parametrize("name", [FORGED_LINE, "\x1b[2Jcolour", "a\u202eb", "\x00", "x" * 300])
def test_unknown_field_names_are_quoted_so_they_cannot_forge_a_log_line(name):
    with pytest.raises(ProtocolError, match="unknown field") as raised:
        LeaseRequest.from_wire({"max_units": 1, name: 1})
    message = str(raised.value)
    assert message.isprintable(), message
    assert len(message) < 200


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(b"\x91" * 1100 + b"\xc0", "nested too deeply"), (b"\xc1", "0xc1"), (b"\x81\xa1a\xc1", "0xc1")],
    ids=["deep", "c1", "c1-inside"],
)
def test_msgpack_refusals_say_what_is_wrong(data, fragment):
    with pytest.raises(ProtocolError, match="body is not valid msgpack: ") as raised:
        codec.unpack(data)
    assert fragment in str(raised.value)


# -- hypothesis: the job file -------------------------------------------------------------------------

JOB_KEYS = ["name", "image", "command", "env", "chunking", "redundancy", "resources", "reduce", "priority",
            "mode", "sweep", "containers", "description"]  # fmt: skip
SECTIONS = {
    "chunking": ["by", "size", "separator"],
    "redundancy": ["replicas", "quorum", "max_attempts", "adaptive"],
    "resources": ["cpus", "memory", "timeout", "gpus", "disk", "arch"],
    "reduce": ["command"],
    "sweep": ["start", "end", "step"],
}
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=20)
    | st.sampled_from(["1MiB", "5m", "lines", "bytes", "amd64", "9" * 5000, "1.5" + "0" * 400, "-1s", "1e999"])
    | st.sampled_from([deep(d) for d in (100, 990, 1000, 1020)]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)  # fmt: skip
SECTION_VALUES = {
    name: PLAIN | st.fixed_dictionaries({}, optional=dict.fromkeys(keys, PLAIN)) for name, keys in SECTIONS.items()
}
JOB_FIELDS = st.fixed_dictionaries(
    {"name": st.just("job") | PLAIN, "image": st.just("dockercomp/wordfreq") | PLAIN},
    optional={key: SECTION_VALUES.get(key, PLAIN) for key in JOB_KEYS[2:]},
)


def _parse(data: Any) -> JobSpec | ProtocolError:
    try:
        spec = parse_jobfile(data)
    except ProtocolError as exc:
        assert str(exc), "a refusal must say what is wrong"
        return exc
    assert parse_jobfile(spec.to_dict()) == spec  # whatever is taken has its canonical form
    return spec


@FUZZ
@given(st.one_of(PLAIN, JOB_FIELDS))
def test_any_object_as_a_job_file_is_a_spec_or_a_protocol_error(data):
    assert isinstance(_parse(data), JobSpec | ProtocolError)


def mutate_tree(tree: Any, r: random.Random) -> Any:
    """A decoded document changed at a random place: a value replaced by anything or nested
    too deeply, an entry left out, an unknown key added."""
    places: list[tuple[Any, Any]] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            places.append((node, key))
            todo.append(value)
    if not places:
        return any_plain(r)
    parent, key = r.choice(places)
    op = r.random()
    if op < 0.6:
        parent[key] = any_plain(r)
    elif op < 0.75:
        parent[key] = deep(r.choice(DEPTHS[:9]), parent[key])
    elif op < 0.9:
        del parent[key]
    elif isinstance(parent, dict):
        parent[text(r)] = any_plain(r)
    return tree


def any_plain(r: random.Random) -> Any:
    """What a JSON or msgpack decoder may give: no Raw pieces, no pairs."""
    return r.choice(
        [None, True, False, 0, -1, 2**63, -(2**64), 1e308, math.inf, -math.inf, math.nan, -0.0, "", "x", "1MiB",
         "0B", "5m", "0s", "7d", "8d", "9" * 5000, "é", "\x00", "\ud800", FORGED_LINE, b"x", [], {}, [1], {"a": 1},
         "bytes", "lines", "records", "files", "batch", "amd64", "a" * 300, deep(3), r.random(), r.getrandbits(70)]
    )  # fmt: skip


@FUZZ
@given(jobfiles(), st.randoms(use_true_random=False))
def test_mutated_job_files_are_a_spec_or_a_protocol_error(data, r):
    for _ in range(r.randint(1, 3)):
        data = mutate_tree(data, r)
    assert isinstance(_parse(data), JobSpec | ProtocolError)


@FUZZ
@given(jobfiles(), st.randoms(use_true_random=False), st.sampled_from([codec.MSGPACK, codec.JSON]))
def test_mutated_job_file_bytes_are_a_spec_or_a_protocol_error(data, r, ctype):
    encoded = write(data, r) if ctype == codec.MSGPACK else json.dumps(data).encode()  # surrogates escaped
    body = mutate_bytes(encoded, r)
    try:
        decoded = codec.decode(body, ctype)
    except ProtocolError:
        return
    assert isinstance(_parse(decoded), JobSpec | ProtocolError)


JOB_PLACES = [
    ("priority", lambda v: {"priority": v}),
    ("mode", lambda v: {"mode": v}),
    ("command", lambda v: {"command": [v]}),
    ("env", lambda v: {"env": {"A": v}}),
    ("chunking.by", lambda v: {"chunking": {"by": v}}),
    ("chunking.size", lambda v: {"chunking": {"size": v}}),
    ("chunking.separator", lambda v: {"chunking": {"separator": v}}),
    ("redundancy.replicas", lambda v: {"redundancy": {"replicas": v}}),
    ("resources.cpus", lambda v: {"resources": {"cpus": v}}),
    ("resources.memory", lambda v: {"resources": {"memory": v}}),
    ("resources.timeout", lambda v: {"resources": {"timeout": v}}),
    ("resources.disk", lambda v: {"resources": {"disk": v}}),
    ("resources.gpus", lambda v: {"resources": {"gpus": v}}),
    ("resources.arch", lambda v: {"resources": {"arch": v}}),
    ("reduce.command", lambda v: {"reduce": {"command": v}}),
    ("sweep.step", lambda v: {"sweep": {"start": 0, "end": 1, "step": v}}),
    ("sweep.end", lambda v: {"sweep": {"start": 0, "end": v}}),
    ("sweep[0]", lambda v: {"sweep": [{"X": v}]}),
    ("containers[0].name", lambda v: {"containers": [{"name": v}, {"name": "m", "main": True}]}),
    ("containers[0].image", lambda v: {"containers": [{"name": "s", "image": v}, {"name": "m", "main": True}]}),
    ("containers[0].main", lambda v: {"containers": [{"name": "s", "main": v}, {"name": "m", "main": True}]}),
]


@pytest.mark.parametrize("depth", [990, 1000, 1100])
@pytest.mark.parametrize(("where", "place"), JOB_PLACES, ids=[w for w, _ in JOB_PLACES])
def test_a_job_file_value_nested_past_the_recursion_limit_is_a_protocol_error(where, place, depth):
    data = {"name": "job", "image": "dockercomp/wordfreq", **place(deep(depth, "x"))}
    with pytest.raises(ProtocolError) as raised:
        parse_jobfile(data)
    assert len(str(raised.value)) < 500


def test_unknown_job_file_keys_are_quoted_so_they_cannot_forge_a_log_line():
    with pytest.raises(ProtocolError, match="unknown key") as raised:
        parse_jobfile({"name": "job", "image": "dockercomp/wordfreq", FORGED_LINE: 1})
    assert str(raised.value).isprintable()
    with pytest.raises(ProtocolError, match="unknown key") as raised:
        parse_jobfile({"name": "job", "image": "x", "resources": {"\x1b[2J": 1}})
    assert str(raised.value).isprintable()


def test_a_job_file_nested_deeply_in_msgpack_is_a_protocol_error():
    """msgpack decodes 1,000 levels without Python's recursion (JSON cannot): what a master gets."""
    deeply = nested(random.Random(0), 1000)
    body = write({"name": "job", "image": "dockercomp/wordfreq", "resources": {"memory": deeply}})
    with pytest.raises(ProtocolError, match="too deeply"):
        parse_jobfile(codec.unpack(body))
