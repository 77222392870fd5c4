"""What a word is, shared by the map and the reduce step.

A word is a run of Unicode letters and digits, with apostrophes inside it kept ("don't",
"o'clock"), case-folded so "The" and "the" count together. Input bytes that are not UTF-8 are
replaced rather than refused: one odd byte must not fail a unit. Words never span lines, so
counting line-aligned chunks separately and adding the counts gives the count of the whole.
"""

import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def words(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        for match in WORD.finditer(line):
            yield match.group().casefold().replace("\u2019", "'")


def count_file(path: str) -> Counter[str]:
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        return Counter(words(handle))


def read_counts(path: str) -> Counter[str]:
    """Read ``word<TAB>count`` lines, as written by write_counts."""
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8", newline="\n") as handle:
        for number, line in enumerate(handle, 1):
            word, tab, count = line.rstrip("\n").rpartition("\t")
            if not tab or not word or not (count.isascii() and count.isdigit()):
                sys.exit(f"{path}:{number}: expected word<TAB>count, got {line[:80]!r}")
            counts[word] += int(count)
    return counts


def write_counts(path: str, pairs: Iterable[tuple[str, int]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.writelines(f"{word}\t{count}\n" for word, count in pairs)
