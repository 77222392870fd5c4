"""Run one benchmark, or all of them, and print the figures as one JSON object on the last line.

    .venv/bin/python bench/run.py NAME [OPTIONS...]     # one benchmark; OPTIONS go to it (e.g. --quick)
    .venv/bin/python bench/run.py all [--quick]         # every one, each as a subprocess

Names: dispatch, container_overhead, datapath, scale, restart, create, dashboard. Each benchmark is
bench/NAME.py, prints its progress on stderr and its figures as one JSON object on its last
stdout line, and writes bench/results/NAME*.json. ``all`` collects the figures into one object
keyed by name; a benchmark that fails is reported there as {"error": ...} and makes the exit
code 1. ``all --quick`` runs each benchmark that offers --quick so (a smoke run of a few
seconds that writes nothing) and skips any other ({"skipped": ...}): a smoke run never
overwrites a recorded result. Started with another Python, this re-executes itself under the
checkout's .venv, which it makes first in a fresh clone (``./dev setup``).
"""

import json
import os
import subprocess
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
NAMES = ("dispatch", "container_overhead", "datapath", "scale", "restart", "create", "dashboard")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*NAMES, "all"):
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, options = argv[0], argv[1:]
    if name != "all":
        figures = run(name, options)
        print(json.dumps(figures, sort_keys=True), flush=True)
        return 1 if "error" in figures else 0
    if options not in ([], ["--quick"]):
        print("run.py all takes only --quick; give a benchmark's own options with its name", file=sys.stderr)
        return 2
    collected: dict[str, Any] = {}
    for each in NAMES:
        started = time.monotonic()
        if options and not _accepts(each, "--quick"):
            collected[each] = {"skipped": f"bench/{each}.py has no --quick"}
            continue
        collected[each] = run(each, options)
        print(f"== {each}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(collected, sort_keys=True), flush=True)
    return 1 if any("error" in f for f in collected.values()) else 0


def run(name: str, options: list[str]) -> dict[str, Any]:
    """Run bench/NAME.py with ``options``; the JSON object on its last stdout line, with an
    "error" added when it exited non-zero ({"error": ...} alone when it printed none). Its
    stderr (progress) passes through."""
    script = os.path.join(BENCH, f"{name}.py")
    proc = subprocess.run([sys.executable, script, *options], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        figures = json.loads(lines[-1]) if lines else None
    except ValueError:
        figures = None
    if not isinstance(figures, dict):
        tail = lines[-1][:300] if lines else "no output"
        return {"error": f"bench/{name}.py exited with code {proc.returncode}; its last line: {tail}"}
    if proc.returncode != 0:  # figures, and a failure (restart: something was lost)
        figures["error"] = f"bench/{name}.py exited with code {proc.returncode}"
    return figures


def _accepts(name: str, option: str) -> bool:
    """Whether bench/NAME.py offers ``option`` (its --help names it)."""
    script = os.path.join(BENCH, f"{name}.py")
    helped = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    return option in helped.stdout


def _in_venv() -> None:
    """Re-execute under .venv/bin/python when started with another interpreter, after making
    it (``./dev setup``: the virtualenv and a Docker engine) in a fresh clone."""
    if not os.path.exists(VENV_PYTHON):
        print("== no .venv here: ./dev setup", file=sys.stderr, flush=True)
        subprocess.run([os.path.join(ROOT, "dev"), "setup"], cwd=ROOT, check=True, stdout=sys.stderr)
    if os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, ".venv")):
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    _in_venv()
    sys.exit(main(sys.argv[1:]))
