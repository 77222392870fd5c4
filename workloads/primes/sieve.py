"""Count primes with a segmented sieve of Eratosthenes, standard library only.

Only odd numbers are kept (one byte each, in a bytearray), and each base prime strikes its
multiples out of a segment with one slice assignment, so the loops run in C: counting the
primes below 10^7 takes well under a second. A segment covers SEGMENT odd numbers, which
bounds memory whatever the range.
"""

from math import isqrt

SEGMENT = 1 << 20


def base_primes(limit: int) -> list[int]:
    """The odd primes up to ``limit`` (inclusive), by a plain sieve."""
    if limit < 3:
        return []
    flags = bytearray([1]) * (limit + 1)
    flags[0:2] = b"\0\0"
    for p in range(2, isqrt(limit) + 1):
        if flags[p]:
            flags[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    return [p for p in range(3, limit + 1, 2) if flags[p]]


def count_primes(start: int, end: int) -> int:
    """How many primes n have ``start <= n < end``."""
    start = max(start, 2)
    if end <= start:
        return 0
    count = 1 if start <= 2 < end else 0
    primes = base_primes(isqrt(end - 1))
    low = start | 1  # the first odd number in range
    while low < end:
        high = min(low + 2 * SEGMENT, end)  # this segment: the odd numbers low, low+2, ... < high
        size = (high - low + 1) // 2
        odd = bytearray([1]) * size  # odd[i] stands for low + 2*i
        for p in primes:
            if p * p >= high:
                break
            first = max(p * p, -(-low // p) * p)  # the first multiple of p at or above low...
            if first % 2 == 0:
                first += p  # ...that is odd
            if first < high:
                i = (first - low) // 2
                odd[i::p] = bytes(len(range(i, size, p)))
        if low == 1:
            odd[0] = 0  # 1 is not a prime
        count += odd.count(1)
        low = high if high % 2 else high + 1
    return count
