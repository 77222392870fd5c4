"""Reduce: add up the prime counts of every map unit.

Reads every file in /input (000000, 000001, ... one count per map unit), writes their sum
as a plain number and a newline to /output/result. A file that is not a single whole
number fails the unit (exit code 1, the file named on stderr).
Usage outside a container: reduce.py [INPUT_DIR [RESULT]].
"""

import os
import sys


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input"
    target = argv[2] if len(argv) > 2 else "/output/result"
    names = sorted(n for n in os.listdir(source) if not n.startswith(".") and os.path.isfile(os.path.join(source, n)))
    total = 0
    for name in names:
        with open(os.path.join(source, name), encoding="ascii", errors="replace") as f:
            text = f.read().strip()
        if not text.isdigit():
            print(f"reduce: input {name} is not a count: {text[:80]!r}", file=sys.stderr)
            return 1
        total += int(text)
    with open(target, "w", encoding="ascii") as f:
        f.write(f"{total}\n")
    print(f"reduce: {len(names)} inputs, {total} primes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
