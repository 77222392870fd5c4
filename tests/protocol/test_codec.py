"""The wire codec: msgpack and JSON both ways; anything malformed is a ProtocolError."""

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(VALUES)
def test_msgpack_round_trip(value):
    assert codec.unpack(codec.pack(value)) == value


@settings(max_examples=100, deadline=None)
@given(VALUES)
def test_json_round_trip(value):
    assert codec.load_json(codec.dump_json(value)) == value


def test_bytes_stay_bytes_in_msgpack():
    assert codec.unpack(codec.pack({"output": b"\x00\xff"})) == {"output": b"\x00\xff"}


def test_json_is_compact_utf8():
    assert codec.dump_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x92\x01",  # an array of two with one item
        b"\x01\x02",  # extra data after the first object
        b"\xd9\x05ab",  # a str8 shorter than announced
        b"\xa2\xff\xfe",  # a str that is not UTF-8
        b"\x91" * 100_000,  # nested too deeply
        msgpack.packb({1: "int key"}),  # map keys must be strings
        msgpack.packb({(1, 2): "array key"}),
    ],
    ids=lambda d: repr(d[:12]),
)
def test_bad_msgpack_is_a_protocol_error(data):
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        codec.unpack(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"{'a': 1}", b"[1,]", b"\xff\xfe\x00", b"\x80abc", b"1 2", b"[" * 100_000, b'{"a":' * 100_000],
    ids=lambda d: repr(d[:12]),
)
def test_bad_json_is_a_protocol_error(data):
    with pytest.raises(ProtocolError, match="not valid JSON"):
        codec.load_json(data)


def only_protocol_errors(decode, data):
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_a_value_or_a_protocol_error(data):
    only_protocol_errors(codec.unpack, data)
    only_protocol_errors(codec.load_json, data)
    only_protocol_errors(lambda d: codec.decode(d, codec.MSGPACK), data)
    only_protocol_errors(lambda d: codec.decode(d, None), data)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([b"[", b"{", b"]", b"}", b'"a"', b":", b",", b"1", b"\\", b"\x91", b"\x81"])))
def test_structured_garbage_gives_a_value_or_a_protocol_error(pieces):
    data = b"".join(pieces)
    only_protocol_errors(codec.unpack, data)
    only_protocol_errors(codec.load_json, data)


@pytest.mark.parametrize(
    ("content_type", "msgpack_expected"),
    [
        ("application/msgpack", True),
        ("Application/MsgPack", True),
        ("application/msgpack; charset=binary", True),
        (" application/msgpack ;x=y", True),
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("text/plain", False),
        ("", False),
        (None, False),
    ],
)
def test_decode_picks_the_codec_by_content_type(content_type, msgpack_expected):
    value = {"a": [1, 2]}
    body = codec.pack(value) if msgpack_expected else codec.dump_json(value)
    assert codec.decode(body, content_type) == value
    other = codec.dump_json(value) if msgpack_expected else codec.pack(value)
    with pytest.raises(ProtocolError):
        codec.decode(other, content_type)


def test_encode_by_content_type():
    value = {"a": 1}
    assert codec.encode(value, codec.MSGPACK) == codec.pack(value)
    assert codec.encode(value, codec.JSON) == codec.dump_json(value)


def test_protocol_errors_are_value_errors():
    with pytest.raises(ValueError):
        codec.unpack(b"\xc1")
