"""Map: filter the images of one chunk.

Reads /input/chunk, an uncompressed tar of image files (the job chunks by files), and writes
to /output/result a tar of the filtered pictures as PNG, in the chunk's order, named after
their input (see pictures.py). A file that is not an image Pillow can read fails the unit,
its name on stderr. FILTER and MAX_SIZE come from the environment.
Usage outside a container: map.py [CHUNK [RESULT]].
"""

import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

from pictures import filtered_png, members, result_name, settings, unique, write_tar


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "/input/chunk"
    target = argv[2] if len(argv) > 2 else "/output/result"
    kind, max_size = settings(os.environ)
    taken: set[str] = set()

    def results(chunk: BinaryIO) -> Iterator[tuple[str, bytes]]:
        for name, data in members(chunk, source):
            try:
                png = filtered_png(data, kind, max_size)
            except (OSError, ValueError, SyntaxError) as exc:  # Pillow's ways of saying "not an image"
                why = "unknown format" if type(exc).__name__ == "UnidentifiedImageError" else f"{exc}"
                sys.exit(f"{name}: not an image Pillow can read ({why})")
            yield unique(result_name(name), taken), png

    with open(source, "rb") as chunk, open(target, "wb") as out:
        count = write_tar(out, results(chunk))
    print(f"map: {count} images filtered ({kind}{f', at most {max_size}px' if max_size else ''})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
