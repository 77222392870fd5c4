"""Map: count the primes n with START <= n < END.

The range comes from the unit's parameters: the environment variables START and END, or
/input/params.json when they are not set. Writes the count as a plain number and a newline
to /output/result. Usage outside a container: map.py [START END [RESULT]].
"""

import json
import os
import sys

from sieve import count_primes

PARAMS = "/input/params.json"


def unit_range(argv: list[str]) -> tuple[int, int]:
    if len(argv) > 2:
        return int(argv[1]), int(argv[2])
    if "START" in os.environ and "END" in os.environ:
        return int(os.environ["START"]), int(os.environ["END"])
    with open(PARAMS, encoding="utf-8") as f:
        params = json.load(f)
    return int(params["START"]), int(params["END"])


def main(argv: list[str]) -> int:
    try:
        start, end = unit_range(argv)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        print(f"map: no range to count in ({exc!r}); set START and END or give {PARAMS}", file=sys.stderr)
        return 2
    if end < start:
        print(f"map: END ({end}) is less than START ({start})", file=sys.stderr)
        return 2
    target = argv[3] if len(argv) > 3 else "/output/result"
    count = count_primes(start, end)
    with open(target, "w", encoding="ascii") as f:
        f.write(f"{count}\n")
    print(f"map: {count} primes in [{start}, {end})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
