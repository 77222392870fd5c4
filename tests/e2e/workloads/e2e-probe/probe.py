"""The end-to-end tests' workload: the first line of /input/chunk says what this unit does.

    echo ...        write the chunk back upper-cased to /output/result
    sleep SECONDS   sleep, then echo
    exit CODE       write to stderr and exit with CODE
    oom             allocate memory until the container's limit stops it
    hang            never finish (the unit's timeout stops it)
    raise           (service mode) raise an exception from the unit's function

A reduce unit (inputs /input/000000, ...) writes every input in name order, joined.
``probe.py serve``: the same in service mode, one warm container for many units (the
runner library dockercomp_runner); ``exit CODE`` ends the container there.
"""

import os
import sys
import time


def reduce(source: str, target: str, names: list[str]) -> int:
    with open(os.path.join(target, "result"), "wb") as out:
        for name in names:
            with open(os.path.join(source, name), "rb") as f:
                out.write(f.read())
    return 0


def main(source: str = "/input", target: str = "/output", service: bool = False) -> int:
    names = sorted(os.listdir(source))
    if names != ["chunk"]:
        return reduce(source, target, names)
    with open(os.path.join(source, "chunk"), "rb") as f:
        data = f.read()
    words = data.split(b"\n", 1)[0].split()
    verb = words[0].decode() if words else "echo"
    if verb == "sleep":
        time.sleep(float(words[1]))
    elif verb == "exit":
        print(f"probe: exiting with {int(words[1])} as asked", file=sys.stderr)
        if service:
            sys.stderr.flush()
            os._exit(int(words[1]))
        return int(words[1])
    elif verb == "raise":
        raise ValueError("probe: raised as asked")
    elif verb == "oom":
        hog = []
        for _ in range(256):  # up to 4 GiB, far past any limit a test sets
            hog.append(b"x" * (16 << 20))  # written, so every page is really used
        print(f"probe: allocated {len(hog) * 16} MiB and was not stopped", file=sys.stderr)
        return 0
    elif verb == "hang":
        while True:
            time.sleep(3600)
    with open(os.path.join(target, "result"), "wb") as out:
        out.write(data.upper())
    return 0


def serve() -> int:
    from dockercomp_runner import serve as serve_units

    def handle(unit) -> None:  # unit: the runner library's Unit
        if main(unit.input, unit.output, service=True):
            raise RuntimeError("the probe failed")

    return serve_units(handle)


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["serve"] else main())
