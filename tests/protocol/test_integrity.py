"""Content addressing: xxh3-128 hex digests, verification and hash checks."""

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.integrity import HASH_RE, check_hash, digest, digest_stream, verify

EMPTY = "99aa06d3014798d86001c324468d497f"  # xxh3-128 of no bytes, from the reference vectors


def test_digest_is_xxh3_128_hex():
    assert digest(b"") == EMPTY
    assert digest(b"abc") == xxhash.xxh3_128_hexdigest(b"abc")
    assert digest(b"abc") != xxhash.xxh64_hexdigest(b"abc")
    assert len(digest(b"abc")) == 32


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096))
def test_digest_properties(data):
    h = digest(data)
    assert HASH_RE.fullmatch(h)
    assert h == xxhash.xxh3_128(data).hexdigest()
    assert check_hash(h) == h
    verify(data, h)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_digest_stream_is_the_digest_of_the_concatenation(pieces):
    assert digest_stream(pieces) == digest(b"".join(pieces))
    assert digest_stream(iter(pieces)) == digest(b"".join(pieces))


def test_digest_stream_of_nothing():
    assert digest_stream([]) == EMPTY


def test_verify_accepts_matching_bytes():
    assert verify(b"abc", digest(b"abc")) is None


def test_verify_raises_integrity_error_on_mismatch():
    expected = digest(b"abc")
    with pytest.raises(IntegrityError) as info:
        verify(b"abd", expected, what="chunk 3")
    error = info.value
    assert error.expected == expected
    assert error.actual == digest(b"abd")
    assert str(error) == f"chunk 3 hashes to {digest(b'abd')}, expected {expected}"
    assert isinstance(error, ProtocolError)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_verify_refuses_other_bytes(a, b):
    if a == b:
        verify(b, digest(a))
    else:
        with pytest.raises(IntegrityError):
            verify(b, digest(a))


def test_verify_refuses_a_malformed_expectation():
    with pytest.raises(IntegrityError):
        verify(b"abc", digest(b"abc").upper())


@pytest.mark.parametrize(
    "value",
    [
        EMPTY.upper(),
        EMPTY[:-1],
        EMPTY + "0",
        EMPTY + "\n",
        " " + EMPTY,
        "g" * 32,
        "",
        None,
        5,
        EMPTY.encode(),
        [EMPTY],
        "../" + EMPTY[3:],
    ],
    ids=repr,
)
def test_check_hash_refuses_malformed_values(value):
    with pytest.raises(ProtocolError, match="output_hash must be 32 lowercase hex digits"):
        check_hash(value, "output_hash")


def test_check_hash_message_is_bounded():
    with pytest.raises(ProtocolError) as info:
        check_hash("x" * 10_000)
    assert len(str(info.value)) < 200
    assert str(info.value).startswith("hash must be")


@pytest.mark.parametrize("value", [EMPTY, "0" * 32, "f" * 32, "0123456789abcdef" * 2])
def test_check_hash_returns_good_values(value):
    assert check_hash(value) is value
