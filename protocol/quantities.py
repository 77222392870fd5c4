"""Sizes ("256MiB") and durations ("5m") as people write them in job files and flags."""

import math
import re

from .errors import ProtocolError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from an int or a string such as "64MiB", "1.5G", "4096"."""
    number, unit = _split(value, what, "a size such as 256MiB or 1GB")
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ProtocolError(f"{what}: unknown size unit {unit!r}; use B, KiB, MiB, GiB, KB, MB or GB")
    try:
        return int(number * factor)  # exact for whole numbers, however large
    except OverflowError:
        raise ProtocolError(f"{what} is too large, got {value!r:.60}") from None


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds from a number or a string such as "90s", "5m", "2h"."""
    number, unit = _split(value, what, "a duration such as 90s, 5m or 2h")
    factor = _DURATION_UNITS.get(unit.lower())
    if factor is None:
        raise ProtocolError(f"{what}: unknown duration unit {unit!r}; use ms, s, m, h or d")
    try:
        seconds = float(number * factor)
    except OverflowError:
        seconds = math.inf
    if math.isinf(seconds):
        raise ProtocolError(f"{what} is too large, got {value!r:.60}")
    return seconds


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"


def _split(value: object, what: str, example: str) -> tuple[int | float, str]:
    """The number (an int when written without a fraction, so large sizes stay exact) and unit."""
    if isinstance(value, bool):
        raise ProtocolError(f"{what} must be {example}, got {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != value or value in (float("inf"),):
            raise ProtocolError(f"{what} must not be negative, got {value!r}")
        return value, ""
    if isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value)
        if match:
            number = match.group(1)
            try:
                return (float(number) if "." in number else int(number)), match.group(2)
            except ValueError:  # more digits than int() converts
                raise ProtocolError(f"{what} is too large, got {value!r:.60}") from None
    raise ProtocolError(f"{what} must be {example}, got {value!r:.60}")
