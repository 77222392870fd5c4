"""What a k-mer is, shared by the map and the reduce step.

A FASTA file is records: a header line starting with ">" and the sequence lines below it.
A k-mer is any k consecutive letters of one record's sequence (line breaks inside a record do
not interrupt it; a record's end does). Letters are upper-cased (soft-masked, lower-case
stretches count), and only k-mers made of A, C, G and T are counted: N and the other IUPAC
codes break the sequence. Lines starting with ";" are comments; lines before the first header
are a record of their own.

Settings come from the environment, the same for every unit of a job:
- ``K``: the k-mer length, 1 to 32 (default 6). K=1 gives the base composition, hence the
  GC content.
- ``CANONICAL``: "1" counts a k-mer and its reverse complement together, under whichever of
  the two sorts first (the usual choice when the strand is unknown); "0" (default) counts the
  k-mers as written.
"""

import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

DEFAULT_K = 6
MAX_K = 32
RUN = re.compile(r"[ACGT]+")
KMER = re.compile(r"[ACGT]{1,32}")
_COMPLEMENT = str.maketrans("ACGT", "TGCA")
_NOT_SEQUENCE = str.maketrans("", "", " \t\r\n\v\f")


def settings(environ: Mapping[str, str]) -> tuple[int, bool]:
    """K and CANONICAL from the environment; exit 2 with a message when they are wrong."""
    raw_k = environ.get("K", "").strip() or str(DEFAULT_K)
    if not (raw_k.isascii() and raw_k.isdigit() and 1 <= int(raw_k) <= MAX_K):
        print(f"K must be a whole number from 1 to {MAX_K}, got {raw_k!r:.40}", file=sys.stderr)
        sys.exit(2)
    raw_canonical = environ.get("CANONICAL", "").strip() or "0"
    if raw_canonical not in ("0", "1"):
        print(f"CANONICAL must be 0 or 1, got {raw_canonical!r:.40}", file=sys.stderr)
        sys.exit(2)
    return int(raw_k), raw_canonical == "1"


def pieces(lines: Iterable[str]) -> Iterator[str | None]:
    """The sequence text of each line, upper-cased and without blanks; None where a record
    begins, so k-mers never span two records."""
    for line in lines:
        if line.startswith(">"):
            yield None
        elif not line.startswith(";"):
            yield line.translate(_NOT_SEQUENCE).upper()


def count_lines(lines: Iterable[str], k: int) -> Counter[str]:
    """Count the k-mers of FASTA text, streaming: only the last k-1 letters of a record stay
    in memory from one line to the next, however long the record."""
    counts: Counter[str] = Counter()
    tail = ""
    for piece in pieces(lines):
        if piece is None:
            tail = ""
            continue
        text = tail + piece
        for run in RUN.findall(text):
            if len(run) >= k:
                counts.update(run[i : i + k] for i in range(len(run) - k + 1))
        tail = text[len(text) - k + 1 :] if k > 1 else ""
    return counts


def count_file(path: str, k: int) -> Counter[str]:
    # latin-1 maps every byte to one character: an odd byte is a letter that is not ACGT.
    with open(path, encoding="latin-1", newline=None) as handle:
        return count_lines(handle, k)


def reverse_complement(kmer: str) -> str:
    return kmer.translate(_COMPLEMENT)[::-1]


def canonical(counts: Counter[str]) -> Counter[str]:
    """Fold each k-mer into the first (in sort order) of itself and its reverse complement."""
    folded: Counter[str] = Counter()
    for kmer, n in counts.items():
        folded[min(kmer, reverse_complement(kmer))] += n
    return folded


def read_counts(path: str) -> Counter[str]:
    """Read ``kmer<TAB>count`` lines, as written by write_counts; every k-mer of one length."""
    counts: Counter[str] = Counter()
    length = 0
    with open(path, encoding="ascii", errors="replace", newline="\n") as handle:
        for number, line in enumerate(handle, 1):
            kmer, tab, count = line.rstrip("\n").partition("\t")
            if not tab or not KMER.fullmatch(kmer) or not (count.isascii() and count.isdigit()):
                sys.exit(f"{path}:{number}: expected kmer<TAB>count, got {line[:80]!r}")
            if length and len(kmer) != length:
                sys.exit(f"{path}:{number}: a {len(kmer)}-mer among {length}-mers: inputs of different K")
            length = len(kmer)
            counts[kmer] += int(count)
    return counts


def write_counts(path: str, pairs: Iterable[tuple[str, int]]) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as out:
        out.writelines(f"{kmer}\t{count}\n" for kmer, count in pairs)
