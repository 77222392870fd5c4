"""Map: count the words of one chunk.

Reads /input/chunk and writes one ``word<TAB>count`` line per distinct word to
/output/result, sorted by word so every replica of the unit writes the same bytes.
Usage outside a container: map.py [CHUNK [RESULT]].
"""

import sys

from words import count_file, write_counts


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input/chunk"
    target = argv[2] if len(argv) > 2 else "/output/result"
    counts = count_file(source)
    write_counts(target, sorted(counts.items()))
    print(f"map: {sum(counts.values())} words, {len(counts)} distinct", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
