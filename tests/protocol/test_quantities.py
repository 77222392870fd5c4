"""Sizes and durations as people write them."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.quantities import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        (1.9, 1),  # fractions of a byte are dropped
        ("4096", 4096),
        ("0", 0),
        ("1B", 1),
        ("1b", 1),
        ("1k", 1000),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("1Ki", 1024),
        ("64MiB", 64 << 20),
        ("64 MiB", 64 << 20),
        ("  64MiB  ", 64 << 20),
        ("2M", 2_000_000),
        ("2MB", 2_000_000),
        ("1.5G", 1_500_000_000),
        ("1.5GiB", 3 << 29),
        ("1GB", 10**9),
        ("1T", 10**12),
        ("2TiB", 2 << 40),
        ("0.5KiB", 512),
        (str(2**53 + 1), 2**53 + 1),  # whole numbers stay exact
        (f"{2**53 + 1}B", 2**53 + 1),
        (2**53 + 1, 2**53 + 1),
        (f"{2**60 + 1}KiB", (2**60 + 1) * 1024),
    ],
)
def test_parse_size(value, expected):
    result = parse_size(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1XB", "unknown size unit 'XB'"),
        ("10 parsecs", "unknown size unit"),
        ("1ms", "unknown size unit"),
        ("-1MiB", "must be a size"),
        ("- 1", "must be a size"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        (float("nan"), "must not be negative"),
        (float("inf"), "must not be negative"),
        (float("-inf"), "must not be negative"),
        (True, "must be a size"),
        (False, "must be a size"),
        (None, "must be a size"),
        ([1], "must be a size"),
        (b"1MiB", "must be a size"),
        ("", "must be a size"),
        ("MiB", "must be a size"),
        ("1e6", "must be a size"),
        ("1.", "must be a size"),
        (".5", "must be a size"),
        ("1,5MiB", "must be a size"),
        ("1 2", "must be a size"),
        ("9" * 400 + ".5MiB", "too large"),
        ("9" * 5000, "too large"),
        (10.0**308 * 10, "must not be negative"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_parse_size_refuses(value, message):
    with pytest.raises(ProtocolError, match=message):
        parse_size(value, "resources.memory")


def test_size_errors_name_the_setting():
    with pytest.raises(ProtocolError, match=r"^resources\.memory"):
        parse_size("lots", "resources.memory")
    with pytest.raises(ProtocolError, match=r"^size\b"):
        parse_size("lots")


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**80), st.sampled_from(["", "B", "KiB", "MiB", "GiB", "KB", "MB", "GB", "TiB"]))
def test_whole_sizes_are_exact(n, unit):
    factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 10**6, "GB": 10**9}
    factor["TiB"] = 1 << 40
    assert parse_size(f"{n}{unit}") == n * factor[unit]
    assert parse_size(f"{n} {unit.lower()}") == n * factor[unit]
    if not unit:
        assert parse_size(n) == n


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("90S", 90.0),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("1.5h", 5400.0),
        ("2h", 7200.0),
        ("7d", 7 * 86400.0),
        (" 10 s ", 10.0),
        ("0.5s", 0.5),
    ],
)
def test_parse_duration(value, expected):
    result = parse_duration(value)
    assert result == pytest.approx(expected)
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5y", "unknown duration unit 'y'"),
        ("5min", "unknown duration unit"),
        ("5 MiB", "unknown duration unit"),
        ("-5s", "must be a duration"),
        (-1, "must not be negative"),
        (-0.001, "must not be negative"),
        (float("nan"), "must not be negative"),
        (float("inf"), "must not be negative"),
        (True, "must be a duration"),
        (False, "must be a duration"),
        (None, "must be a duration"),
        ({"s": 5}, "must be a duration"),
        ("", "must be a duration"),
        ("s", "must be a duration"),
        ("1h30m", "must be a duration"),
        (10**400, "too large"),
        ("9" * 400 + "s", "too large"),
        ("9" * 400 + ".0d", "too large"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_parse_duration_refuses(value, message):
    with pytest.raises(ProtocolError, match=message):
        parse_duration(value, "resources.timeout")


def test_duration_errors_name_the_setting():
    with pytest.raises(ProtocolError, match=r"^resources\.timeout"):
        parse_duration("soon", "resources.timeout")


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=1e12), st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]))
def test_durations_scale_by_unit(x, unit):
    name, factor = unit
    assert math.isclose(parse_duration(f"{x:.6f}{name}"), float(f"{x:.6f}") * factor, rel_tol=1e-12)
    assert parse_duration(x) == x


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (1536, "1.5KiB"),
        (256 << 20, "256.0MiB"),
        ((1 << 30) - 1, "1024.0MiB"),
        (3 << 30, "3.0GiB"),
        (5 << 40, "5120.0GiB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 1 << 50))
def test_format_size_reads_back_close(n):
    assert parse_size(format_size(n)) == pytest.approx(n, rel=0.05, abs=1)
