"""The benchmark harness cannot rot silently: ``bench/run.py`` runs a benchmark in its quick
form (a few seconds, nothing written to bench/results) and its last stdout line is the figures
as one JSON object. Speed itself is never asserted here: see bench/README.md."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run.py")
FIGURES = {"units_per_s", "lease_p50_ms", "lease_p99_ms", "results_p50_ms", "results_p99_ms"}


def run_bench(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, RUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1])


def test_dispatch_quick_prints_its_figures_as_json_on_the_last_line():
    before = _dispatch_results()
    code, figures = run_bench("dispatch", "--quick")
    assert code == 0, figures
    assert set(figures) == {"one_master_replicas1", "one_master_replicas2", "two_masters_replicas1"}
    for scenario in figures.values():
        assert set(scenario) == FIGURES
        assert scenario["units_per_s"] > 0
    assert _dispatch_results() == before  # a quick run records nothing


def _dispatch_results() -> dict[str, int]:
    results = os.path.join(ROOT, "bench", "results")
    return {n: os.stat(os.path.join(results, n)).st_mtime_ns for n in os.listdir(results) if n.startswith("dispatch")}


def test_dashboard_quick_measures_the_stream_and_the_first_paint():
    before = _results("dashboard")
    code, figures = run_bench("dashboard", "--quick")
    assert code == 0, figures
    assert figures["full_bytes"] > figures["update_max_bytes"] > 0  # patches, smaller than the snapshot
    assert figures["updates"] >= 2 and figures["feed_read_median_ms"] > 0
    if os.path.exists("/usr/bin/chromium") or os.environ.get("CI"):  # the browser tests' rule (tests/needs.py)
        assert figures["first_paint_median_ms"] > 0
    assert _results("dashboard") == before  # a quick run records nothing


def _results(prefix: str) -> dict[str, int]:
    results = os.path.join(ROOT, "bench", "results")
    return {n: os.stat(os.path.join(results, n)).st_mtime_ns for n in os.listdir(results) if n.startswith(prefix)}


def test_an_unknown_benchmark_is_refused():
    proc = subprocess.run([sys.executable, RUN, "nonesuch"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "dispatch" in proc.stderr
