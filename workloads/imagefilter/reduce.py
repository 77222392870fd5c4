"""Reduce: pack the pictures of every map unit into one tar.

Reads every file in /input (000000, 000001, ... one tar per map unit, in name order) and
writes their members to /output/result as one uncompressed tar, in unit order, with the same
fixed metadata; a name that an earlier unit used already gets ``-2``, ``-3``... (two inputs
``cat.jpg`` and ``cat.png`` both give ``cat.png``). A concatenation of tars is not a tar,
so this job needs its reduce step.
Usage outside a container: reduce.py [INPUT_DIR [RESULT]].
"""

import os
import sys
from collections.abc import Iterator

from pictures import members, unique, write_tar


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input"
    target = argv[2] if len(argv) > 2 else "/output/result"
    names = sorted(n for n in os.listdir(source) if not n.startswith(".") and os.path.isfile(os.path.join(source, n)))
    taken: set[str] = set()

    def pictures() -> Iterator[tuple[str, bytes]]:
        for name in names:
            path = os.path.join(source, name)
            with open(path, "rb") as archive:
                for member, data in members(archive, path):
                    yield unique(member, taken), data

    with open(target, "wb") as out:
        count = write_tar(out, pictures())
    print(f"reduce: {len(names)} inputs, {count} pictures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
