"""Write sample FASTA for the kmers job: random DNA records, the same bytes for the same seed
and size. Each record has its own length and GC content; some carry soft-masked (lower-case)
stretches, runs of N and other IUPAC codes, so the counting rules are exercised.

    python3 workloads/kmers/sample.py --size 4MiB > sample.fa
"""

import argparse
import os
import random
import sys
from collections.abc import Iterator

UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
LINE = 60  # letters per sequence line, as most FASTA files have


def size(text: str) -> int:
    number = text.rstrip("BKMGi")
    unit = text[len(number) :]
    if unit not in UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"size like 512KiB or 4MiB, not {text!r}")
    return int(number) * UNITS[unit]


def sequence(rng: random.Random, length: int, gc: float) -> str:
    at = (1 - gc) / 2
    letters = rng.choices("ACGT", weights=(at, gc / 2, gc / 2, at), k=length)
    for _ in range(rng.randint(0, 2)):  # soft-masked repeats
        start, span = rng.randrange(length), rng.randint(10, 200)
        letters[start : start + span] = [c.lower() for c in letters[start : start + span]]
    if rng.random() < 0.3:  # an assembly gap
        start, span = rng.randrange(length), rng.randint(1, 50)
        letters[start : start + span] = ["N"] * len(letters[start : start + span])
    for _ in range(rng.randint(0, 3)):  # ambiguity codes
        letters[rng.randrange(length)] = rng.choice("RYSWKMN")
    return "".join(letters)


def records(seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for number in range(1, 1 << 62):
        length = rng.randint(50, 5000)
        gc = round(rng.uniform(0.3, 0.7), 2)
        letters = sequence(rng, length, gc)
        lines = [letters[i : i + LINE] for i in range(0, len(letters), LINE)]
        yield f">seq{number} length={len(letters)} gc={gc}\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size, default=size("4MiB"), help="bytes to write at most, e.g. 512KiB")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    written = 0
    try:
        for record in records(args.seed):
            data = record.encode()
            if written + len(data) > args.size:
                break
            out.write(data)
            written += len(data)
        out.flush()
    except BrokenPipeError:  # `| head` is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
