"""The README's first command: ``./dev demo`` runs ``python -m dockercomp.demo``, which must
run the whole system and check its result."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEMO_TIMEOUT = 240.0


def test_the_demo_runs_a_job_on_two_volunteers_and_verifies_its_result(wordfreq_image: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_SERVER_", "DOCKERCOMP_CLIENT_"))}
    done = subprocess.run(
        [sys.executable, "-m", "dockercomp.demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "result verified" in done.stdout, output
    assert "units computed by both volunteers with identical outputs" in done.stdout, output
    assert re.search(r"volunteer-1\s+online", done.stdout) and re.search(r"volunteer-2\s+online", done.stdout), output
    assert done.stdout.count("stopped (exit 0)") == 3, output
    removed = re.search(r"==> removed (\S+)", done.stdout)
    assert removed and not Path(removed.group(1)).exists(), output
