"""Map: count the k-mers of one chunk of FASTA records.

Reads /input/chunk (whole records: the job chunks by records, so no record is ever split)
and writes one ``kmer<TAB>count`` line per distinct k-mer to /output/result, sorted by
k-mer, so every replica of the unit writes the same bytes. K and CANONICAL come from the
environment (see kmers.py). Usage outside a container: map.py [CHUNK [RESULT]].
"""

import os
import sys

from kmers import canonical, count_file, settings, write_counts


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input/chunk"
    target = argv[2] if len(argv) > 2 else "/output/result"
    k, fold = settings(os.environ)
    counts = count_file(source, k)
    if fold:
        counts = canonical(counts)
    write_counts(target, sorted(counts.items()))
    print(f"map: K={k}, {sum(counts.values())} k-mers, {len(counts)} distinct", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
