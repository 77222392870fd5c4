"""Reduce: merge the k-mer counts of every map unit.

Reads every file in /input (000000, 000001, ... one per map unit, in name order), adds the
counts and writes one ``kmer<TAB>count`` line per k-mer to /output/result, most frequent
first, ties by k-mer, so the job's result is the same bytes whatever order units finished in.
Usage outside a container: reduce.py [INPUT_DIR [RESULT]].
"""

import os
import sys
from collections import Counter

from kmers import read_counts, write_counts


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input"
    target = argv[2] if len(argv) > 2 else "/output/result"
    names = sorted(n for n in os.listdir(source) if not n.startswith(".") and os.path.isfile(os.path.join(source, n)))
    total: Counter[str] = Counter()
    lengths: set[int] = set()
    for name in names:
        counts = read_counts(os.path.join(source, name))
        if counts:
            lengths.add(len(next(iter(counts))))
        total.update(counts)
    if len(lengths) > 1:
        sys.exit(f"reduce: the inputs hold k-mers of different lengths {sorted(lengths)}: units of different K")
    write_counts(target, sorted(total.items(), key=lambda item: (-item[1], item[0])))
    print(f"reduce: {len(names)} inputs, {sum(total.values())} k-mers, {len(total)} distinct", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
