"""Service mode: map.py's k-mer count for every unit a volunteer's daemon sends to this warm
container (a job with ``"mode": "service"`` and ``"command": ["python3", "/app/serve.py"]``).
A unit's result is byte for byte what map.py writes in batch mode: it is map.py's own code."""

import sys

from dockercomp_runner import main_of, serve
from map import main

if __name__ == "__main__":
    sys.exit(serve(main_of(main)))
