"""The end-to-end tests' workload: the first line of /input/chunk says what this unit does.

    echo ...        write the chunk back upper-cased to /output/result
    sleep SECONDS   sleep, then echo
    exit CODE       write to stderr and exit with CODE
    oom             allocate memory until the container's limit stops it
    hang            never finish (the unit's timeout stops it)

A reduce unit (inputs /input/000000, ...) writes every input in name order, joined.
"""

import os
import sys
import time


def reduce(names: list[str]) -> int:
    with open("/output/result", "wb") as out:
        for name in names:
            with open(os.path.join("/input", name), "rb") as f:
                out.write(f.read())
    return 0


def main() -> int:
    names = sorted(os.listdir("/input"))
    if names != ["chunk"]:
        return reduce(names)
    with open("/input/chunk", "rb") as f:
        data = f.read()
    words = data.split(b"\n", 1)[0].split()
    verb = words[0].decode() if words else "echo"
    if verb == "sleep":
        time.sleep(float(words[1]))
    elif verb == "exit":
        print(f"probe: exiting with {int(words[1])} as asked", file=sys.stderr)
        return int(words[1])
    elif verb == "oom":
        hog = []
        for _ in range(256):  # up to 4 GiB, far past any limit a test sets
            hog.append(b"x" * (16 << 20))  # written, so every page is really used
        print(f"probe: allocated {len(hog) * 16} MiB and was not stopped", file=sys.stderr)
        return 0
    elif verb == "hang":
        while True:
            time.sleep(3600)
    with open("/output/result", "wb") as out:
        out.write(data.upper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
