"""Write a primes job file that counts the primes up to N (inclusive) in a number of units.

The sweep covers 1 <= n < N+1 (a sweep's end is exclusive) in equal steps; everything else
comes from this folder's job.json. Usage: sample.py [--upto N] [--units K] > job.json
"""

import argparse
import json
import sys
from pathlib import Path


def job_file(upto: int, units: int) -> dict[str, object]:
    job = json.loads((Path(__file__).parent / "job.json").read_text())
    step = -(-upto // units)  # the last unit may be shorter
    job["description"] = f"Count the primes up to {upto} in {-(-upto // step)} units, then add the counts."
    job["sweep"] = {"start": 1, "end": upto + 1, "step": step}
    return job


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upto", type=int, default=10**7, help="count the primes up to this number (default 10^7)")
    parser.add_argument("--units", type=int, default=10, help="how many units to split the range into (default 10)")
    args = parser.parse_args(argv)
    if args.upto < 1 or not 1 <= args.units <= args.upto:
        parser.error("--upto must be at least 1 and --units from 1 to --upto")
    json.dump(job_file(args.upto, args.units), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
