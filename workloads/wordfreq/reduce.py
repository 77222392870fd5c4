"""Reduce: merge the word counts of every map unit.

Reads every file in /input (000000, 000001, ... one per map unit, in name order), adds the
counts and writes one ``word<TAB>count`` line per word to /output/result, most frequent
first, ties by word, so the job's result is the same bytes whatever order units finished in.
Usage outside a container: reduce.py [INPUT_DIR [RESULT]].
"""

import os
import sys
from collections import Counter

from words import read_counts, write_counts


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input"
    target = argv[2] if len(argv) > 2 else "/output/result"
    names = sorted(n for n in os.listdir(source) if not n.startswith(".") and os.path.isfile(os.path.join(source, n)))
    total: Counter[str] = Counter()
    for name in names:
        total.update(read_counts(os.path.join(source, name)))
    write_counts(target, sorted(total.items(), key=lambda item: (-item[1], item[0])))
    print(f"reduce: {len(names)} inputs, {sum(total.values())} words, {len(total)} distinct", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
