"""The scientist's Python API (``from dockercomp import Master``) from end to end: a real master,
real daemons as processes, real containers. What comes out is checked against what is
computed here; where a unit went wrong, the API and the CLI's ``units`` and ``logs`` say why."""

import json
from pathlib import Path
from typing import Any

import pytest

from dockercomp import JobFailed, Master
from dockercomp.client import images
from dockercomp.protocol.chunking import chunk_inputs
from dockercomp.protocol.jobfile import parse_jobfile

from .cluster import Daemons, cli, publish, sample_text, wordfreq_expected, wordfreq_map_output

pytestmark = pytest.mark.slow

WAIT = 150.0
# a unit's work in one line of Python (the wordfreq image has python3): its input in capitals;
# an input of "fail" writes to stderr and exits 3
UPPER = [
    "python3", "-c",
    "import sys; d = open('/input/chunk').read()\n"
    "if d == 'fail': sys.exit(print('no capitals for', d, file=sys.stderr) or 3)\n"
    "open('/output/result', 'w').write(d.upper())",
]  # fmt: skip
RESOURCES = {"cpus": 1, "memory": "64MiB", "timeout": "60s"}


@pytest.fixture
def api(master: Any, wordfreq_image: str) -> Master:
    publish(master, wordfreq_image)
    return Master(master.url, token=master.token)


def test_submit_wait_results_and_outputs_from_paths_and_bytes(
    api: Master, master: Any, daemons: Daemons, wordfreq_image: str, tmp_path: Path
) -> None:
    """A job file as a dict, one input as a path and one as bytes: chunked here as the job
    file says, waited for, its result the word count of both texts counted here; ``outputs``
    gives each map unit's output in order."""
    first = sample_text(tmp_path / "one.txt", "120KiB", seed=5)
    second = sample_text(tmp_path / "two.txt", "90KiB", seed=6).read_bytes()
    jobfile = json.loads((images.workloads_dir() / "wordfreq" / "job.json").read_text())
    jobfile |= {"chunking": {"by": "lines", "size": "64KiB"}, "resources": RESOURCES}
    daemons.start(master, "one"), daemons.start(master, "two")

    job = api.submit(jobfile, [first, second])
    chunks = [*chunk_inputs([str(first)], parse_jobfile(jobfile).chunking)]
    (tmp_path / "two.txt").write_bytes(second)
    chunks += chunk_inputs([str(tmp_path / "two.txt")], parse_jobfile(jobfile).chunking)
    assert job.size == len(chunks) >= 4

    status = job.wait(progress=True, timeout=WAIT)  # no terminal here: nothing drawn, the same status
    assert status.state == "done" and status.finished and status.units["done"] == len(chunks) + 1  # and the reduce
    both = tmp_path / "both.txt"
    both.write_bytes(first.read_bytes() + second)
    assert job.results() == wordfreq_expected(both)
    assert list(job.outputs()) == [wordfreq_map_output(c, tmp_path / "chunk") for c in chunks]
    again = api.job(job.id)  # the same job, found by its id
    assert again.status() == status and again.units(failed=True) == []


def test_map_gives_each_items_output_in_order_and_names_the_unit_that_failed(
    api: Master, master: Any, daemons: Daemons, tmp_path: Path
) -> None:
    """``map``: one unit per item (bytes, text, JSON), outputs in the items' order. An item
    whose unit fails stops ``outputs`` there with the unit's error kind, exit code and stderr;
    ``results`` says the job failed and why; the CLI's ``units --failed`` and ``logs`` show it."""
    one, two = daemons.start(master, "one"), daemons.start(master, "two")  # one volunteer alone cannot fail a unit
    items: list[Any] = ["alpha", b"beta", {"n": 3}, "gamma"]
    job = api.map("dockercomp/wordfreq:latest", UPPER, items, resources=RESOURCES, wait=True)
    assert [*job.outputs()] == [b"ALPHA", b"BETA", b'{"N":3}', b"GAMMA"]
    assert job.status().state == "done" and job.size == 4

    bad = api.map("dockercomp/wordfreq:latest", UPPER, ["fine", "fail", "late"], name="with-a-failure",
                  resources=RESOURCES, redundancy={"replicas": 1, "quorum": 1, "max_attempts": 2})  # fmt: skip
    produced = []
    with pytest.raises(JobFailed) as failed:
        for output in bad.outputs(poll=0.2):
            produced.append(output)
    assert produced == [b"FINE"]
    said = str(failed.value)
    assert "unit 1" in said and "failed" in said and "exit code 3" in said and "no capitals for fail" in said, said
    assert bad.wait(timeout=WAIT).state == "failed"
    with pytest.raises(JobFailed, match=r"ended failed.*unit 1: exit_nonzero, exit code 3"):
        bad.results()
    assert bad.results(partial=True) == b"FINELATE"

    listed = cli("units", bad.id, "--failed", master=master)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:5] == ["UNIT", "KIND", "STATE", "ATTEMPTS", "ERROR"]
    attempts = bad.units(failed=True)[0]["attempts"]
    assert {a["client"] for a in attempts} == {one.client, two.client}
    tried = [a for a in attempts if a["error"]]
    assert len(tried) >= 2 and {a["exit_code"] for a in tried} == {3}
    expected = ["1", "map", "failed", str(len(attempts)), "exit_nonzero", "3"]
    assert [row.split()[:6] for row in rows] == [expected], listed.stdout
    assert "no capitals for fail" in rows[0]
    logs = cli("logs", bad.id, "1", master=master)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count("\nattempt ") == len(attempts) and logs.stdout.count("exit code 3") == len(tried)
    assert logs.stdout.count("no capitals for fail") == len(tried), logs.stdout
    as_json = json.loads(cli("logs", bad.id, f"{bad.id}.1", "--json", master=master).stdout)
    assert as_json["index"] == 1 and as_json["attempts"] == attempts
    missing = cli("logs", bad.id, "7", master=master)
    assert missing.returncode == 2 and f"job {bad.id} has no unit 7" in missing.stderr


def test_cancel_stops_a_job_and_results_say_so(api: Master, master: Any, daemons: Daemons) -> None:
    """A job held back by a unit that sleeps is cancelled: its status says cancelled, its
    result is refused with why, what finished before stays."""
    daemons.start(master, "one", slots=1)
    slow = ["python3", "-c", "import time; d = open('/input/chunk').read(); time.sleep(30 if d == 'slow' else 0)\n"
            "open('/output/result', 'w').write(d)"]  # fmt: skip
    job = api.map("dockercomp/wordfreq:latest", slow, ["quick", "slow", "never"], resources=RESOURCES)
    outputs = job.outputs(poll=0.2)
    assert next(outputs) == b"quick"
    status = job.cancel()
    assert status.state == "cancelled" and status.finished
    with pytest.raises(JobFailed, match="cancelled"):
        next(outputs)
    with pytest.raises(JobFailed, match=f"job {job.id} ended cancelled"):
        job.results()
    assert job.results(partial=True) == b"quick"
