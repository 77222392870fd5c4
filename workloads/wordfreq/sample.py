"""Write sample text for the wordfreq job: Zipf-distributed words in lines, the same bytes
for the same seed and size, with capitals, punctuation, apostrophes and a few non-ASCII
words so the word rules are exercised.

    python3 workloads/wordfreq/sample.py --size 4MiB > sample.txt
"""

import argparse
import itertools
import os
import random
import sys
from collections.abc import Iterator

SPECIAL = ["don't", "o'clock", "Straße", "naïve", "café", "Ωmega", "l\u2019\u00e9t\u00e9", "ÉCOLE", "x2", "3d"]
UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def size(text: str) -> int:
    number = text.rstrip("BKMGi")
    unit = text[len(number) :]
    if unit not in UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"size like 512KiB or 4MiB, not {text!r}")
    return int(number) * UNITS[unit]


def vocabulary(rng: random.Random, n: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["a", "e", "i", "o", "u", "an", "er"]
    made = {"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(n)}
    return sorted(made) + SPECIAL


def lines(seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    vocab = vocabulary(rng, 5000)
    rng.shuffle(vocab)
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocab))))
    while True:
        picked = rng.choices(vocab, cum_weights=weights, k=rng.randint(3, 16))
        words = [w.capitalize() if rng.random() < 0.1 else w for w in picked]
        yield " ".join(words) + rng.choice([".", ",", "!", "?", " --", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size, default=size("4MiB"), help="bytes to write, e.g. 512KiB (default 4MiB)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    written = 0
    try:
        for line in lines(args.seed):
            data = (line + "\n").encode()
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
