"""The whole system at work: a real master process, real client daemons as processes of their
own, real containers. Each test checks what came out against what it computes itself, and
where the work went, through the master's scientist API."""

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dockercomp.client import images
from dockercomp.protocol.chunking import chunk_inputs
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import parse_jobfile
from dockercomp.scientist import Master

from .cluster import (
    Daemons,
    cli,
    clients,
    job_status,
    job_units,
    partial_results,
    publish,
    sample_text,
    submit,
    wait_for,
    wait_job,
    wordfreq_expected,
    wordfreq_map_output,
)

pytestmark = pytest.mark.slow

JOB_WAIT = 150.0


def wordfreq_job(**sections: Any) -> dict[str, Any]:
    """The wordfreq workload's own job file, with some sections replaced."""
    job = json.loads((images.workloads_dir() / "wordfreq" / "job.json").read_text())
    return job | sections


def probe_job(image: str, **sections: Any) -> dict[str, Any]:
    return {"name": "probe", "image": image, "resources": {"cpus": 1, "memory": "64MiB", "timeout": "30s"}} | sections


# -- the work ------------------------------------------------------------------------------------


def test_wordfreq_with_two_replicas_on_two_daemons_gives_the_counts_computed_here(
    master: Any, daemons: Daemons, wordfreq_image: str, tmp_path: Path
) -> None:
    """The scientist's commands from end to end: submit, wait, results. Every unit is computed
    by both volunteers, their outputs agree, and the result is the word count of the whole
    text, counted here in one pass."""
    text = sample_text(tmp_path / "sample.txt", "480KiB")
    jobfile = tmp_path / "job.json"
    jobfile.write_text(
        json.dumps(
            wordfreq_job(
                chunking={"by": "lines", "size": "20KiB"},
                redundancy={"replicas": 2, "quorum": 2, "max_attempts": 4},
                resources={"cpus": 1, "memory": "128MiB", "timeout": "60s"},
            )
        )
    )
    one, two = daemons.start(master, "one"), daemons.start(master, "two")

    submitted = cli("submit", str(jobfile), str(text), "--json", master=master)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["job"]
    assert wait_job(master, job, JOB_WAIT)["state"] == "done"
    out = tmp_path / "result.txt"
    downloaded = cli("results", job, "-o", str(out), master=master)
    assert downloaded.returncode == 0, downloaded.stderr
    assert out.read_bytes() == wordfreq_expected(text)

    units = job_units(master, job)
    maps = [u for u in units if u["kind"] == "map"]
    assert len(maps) >= 20 and [u["kind"] for u in units].count("reduce") == 1
    for unit in units:
        assert unit["state"] == "done", unit
        succeeded = [a for a in unit["attempts"] if a["state"] == "succeeded"]
        assert sorted(a["client"] for a in succeeded) == sorted([one.client, two.client]), unit
        assert all(a["validity"] == "valid" and a["output"] == unit["output"] for a in succeeded), unit
        assert not [a for a in unit["attempts"] if a["state"] == "errored"], unit
    shown = {c["id"]: c for c in clients(master)}
    for daemon in (one, two):
        assert shown[daemon.client]["name"] == daemon.name and shown[daemon.client]["online"]
        assert shown[daemon.client]["valid"] == len(units) and shown[daemon.client]["invalid"] == 0


def test_a_daemon_killed_mid_run_loses_its_units_to_the_other(master: Any, daemons: Daemons, probe_image: str) -> None:
    """kill -9 one of two daemons while its containers run: the master hears nothing more,
    times its leases out and issues their units again; the other daemon computes them. The
    killed daemon, started again, removes the containers it left."""
    chunks = [b"sleep 1.5 unit %d\n" % i for i in range(12)]
    victim, survivor = daemons.start(master, "victim"), daemons.start(master, "survivor")
    job, _ = submit(master, probe_job(probe_image, redundancy={"replicas": 1, "quorum": 1, "max_attempts": 3}), chunks)

    def victim_running() -> list[Any]:
        return [c for c in daemons.containers(victim.client) if c["State"] == "running"]

    wait_for(victim_running, 60, "a container of the victim to run")
    victim.kill()
    assert daemons.containers(victim.client), "a daemon killed with SIGKILL leaves its containers"

    assert wait_job(master, job, JOB_WAIT)["state"] == "done"
    assert partial_results(master, job) == b"".join(c.upper() for c in chunks)
    units = job_units(master, job)
    reissued = 0
    for unit in units:
        assert unit["state"] == "done", unit
        by_victim = [a for a in unit["attempts"] if a["client"] == victim.client]
        assert all(a["state"] in ("succeeded", "timed_out") for a in by_victim), unit
        if any(a["state"] == "timed_out" for a in by_victim):
            reissued += 1
            (winner,) = [a for a in unit["attempts"] if a["state"] == "succeeded"]
            assert winner["client"] == survivor.client and winner["validity"] == "valid", unit
            assert winner["leased_at"] > max(a["leased_at"] for a in by_victim), unit
    assert reissued >= 1, "the victim held no unit when it was killed"

    again = daemons.restart(master, victim)
    assert again.client == victim.client, "a restarted daemon is the same client"
    wait_for(lambda: "container(s) an earlier run left" in again.log(), 30, "the restarted daemon to clean up")
    assert not daemons.containers(victim.client), "the restarted daemon removed what it left"


def test_a_corrupted_chunk_is_reported_as_an_integrity_failure_and_never_computed(
    master: Any, daemons: Daemons, wordfreq_image: str, tmp_path: Path
) -> None:
    """A chunk file in the master's blob store is damaged after the job was submitted. Each
    daemon downloads it, finds that it does not hash to its name, downloads it again, and
    reports an ``integrity`` error; no container ever sees it, no output comes from it, and
    the unit fails once max_attempts daemons said so. The other units are computed."""
    text = sample_text(tmp_path / "sample.txt", "300KiB", seed=3)
    spec = parse_jobfile(
        wordfreq_job(
            chunking={"by": "lines", "size": "100KiB"},
            redundancy={"replicas": 1, "quorum": 1, "max_attempts": 2},
            resources={"cpus": 1, "memory": "128MiB", "timeout": "60s"},
            reduce=None,
        )
    )
    publish(master, spec.image)
    scientist = Master(master.url, token=master.token)
    hashes = scientist.upload_chunks(spec, [str(text)], progress=False)
    job = scientist.create_job(spec, hashes)
    assert len(hashes) == 3
    bad = hashes[1]
    path = master.data_dir / "blobs" / bad[:2] / bad[2:4] / bad  # chunks past 64 KiB are files
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    path.write_bytes(bytes(data))

    one, two = daemons.start(master, "one", slots=1), daemons.start(master, "two", slots=1)
    assert wait_job(master, job, JOB_WAIT)["state"] == "failed"

    units = {u["index"]: u for u in job_units(master, job)}
    broken = units[1]
    assert broken["state"] == "failed" and broken["output"] is None, broken
    assert [(a["state"], a["error"]) for a in broken["attempts"]] == [("errored", "integrity")] * 2, broken
    assert {a["client"] for a in broken["attempts"]} == {one.client, two.client}
    assert all(f"expected {bad}" in a["stderr_tail"] for a in broken["attempts"]), broken
    chunks = list(chunk_inputs([str(text)], spec.chunking))  # as upload_chunks cut them
    assert [digest(c) for c in chunks] == hashes
    good = {i: wordfreq_map_output(chunks[i], tmp_path / "chunk") for i in (0, 2)}
    for i, output in good.items():
        assert units[i]["state"] == "done" and units[i]["output"] == digest(output), units[i]
    assert partial_results(master, job) == good[0] + good[2], "the failed unit adds nothing to the result"
    refused = cli("results", job, "-o", str(tmp_path / "out"), master=master)
    assert refused.returncode == 1 and "failed" in refused.stderr
    for daemon in (one, two):
        log = daemon.log()
        assert f"failed its integrity check: input {bad} (downloaded 2 times)" in log
        assert f"unit {broken['id']}): container" not in log, "a container ran on the damaged chunk"


# -- failures ------------------------------------------------------------------------------------


def test_each_failure_ends_in_its_error_kind_after_max_attempts(
    master: Any, daemons: Daemons, probe_image: str
) -> None:
    """A container that exits non-zero, one that runs out of memory, one that runs past its
    timeout: every attempt reports that kind, the unit is tried max_attempts times (on the same
    client too: these are failures of the unit, not of the volunteer), then fails."""
    chunks = [b"exit 3\n", b"oom\n", b"hang\n"]
    volunteers = [daemons.start(master, f"v{i}", slots=2) for i in range(2)]
    job, _ = submit(
        master,
        probe_job(
            probe_image,
            redundancy={"replicas": 1, "quorum": 1, "max_attempts": 3},
            resources={"cpus": 1, "memory": "48MiB", "timeout": "3s"},
        ),
        chunks,
    )
    assert wait_job(master, job, JOB_WAIT)["state"] == "failed"
    units = {u["index"]: u for u in job_units(master, job)}
    expected = {
        0: ("exit_nonzero", 3, "probe: exiting with 3 as asked"),
        1: ("oom", None, "out of memory"),
        2: ("timeout", None, "killed after the unit's timeout of 3s"),
    }
    for index, (error, exit_code, stderr) in expected.items():
        unit = units[index]
        assert unit["state"] == "failed" and unit["output"] is None, unit
        attempts = unit["attempts"]
        assert [(a["state"], a["error"]) for a in attempts] == [("errored", error)] * 3, unit
        assert all(stderr in a["stderr_tail"] for a in attempts), unit
        assert {a["client"] for a in attempts} <= {v.client for v in volunteers}, unit
        if exit_code is not None:
            assert all(a["exit_code"] == exit_code for a in attempts), unit
        if error == "timeout":
            assert all(a["runtime"] is None or a["runtime"] >= 3.0 for a in attempts), unit
    errors = Counter({c["id"]: c["errors"] for c in clients(master)})
    assert sum(errors[v.client] for v in volunteers) == 9, errors
    assert job_status(master, job)["units"]["failed"] == 3


# -- security ------------------------------------------------------------------------------------

ECHO = (
    "import json, os, sys\n"
    "env = {k: v for k, v in os.environ.items() if k.startswith('HOSTILE')}\n"
    "json.dump({'argv': sys.argv[1:], 'env': env, 'inputs': sorted(os.listdir('/input'))},"
    " open('/output/result', 'w'))\n"
)


def test_hostile_strings_from_the_master_never_reach_a_host_shell(
    master: Any, daemons: Daemons, probe_image: str, tmp_path: Path
) -> None:
    """A job whose command, reduce command, environment, description and input carry shell
    syntax that would create a marker file in the host's /tmp if anything on the way put it
    through a shell, run by a daemon whose own name is hostile too. Each string reaches the
    container byte for byte; a shell given as the command runs, but only in the container;
    no marker appears on the host and the daemon carries on."""
    token = uuid.uuid4().hex[:10]
    hostile = [
        f"$(touch /tmp/pwned-X-{token})",
        f"`touch /tmp/pwned-Y-{token}`",
        f"; touch /tmp/pwned-Z-{token}",
        f"\ntouch /tmp/pwned-N-{token}\n",
        f"' \"; touch /tmp/pwned-Q-{token} #",
        f"&& touch /tmp/pwned-A-{token} | touch /tmp/pwned-P-{token} > /tmp/pwned-R-{token}",
    ]
    env = {f"HOSTILE_{i}": value for i, value in enumerate(hostile)}
    name = f"$(touch /tmp/pwned-C-{token}) `touch /tmp/pwned-D-{token}`; touch /tmp/pwned-E-{token} #"

    def markers() -> list[str]:
        return sorted(p.name for p in Path("/tmp").glob(f"pwned-*-{token}"))

    daemon = daemons.start(master, name, slots=1)
    echo, _ = submit(
        master,
        probe_job(
            probe_image,
            name="hostile-echo",
            description=" ".join(hostile),
            command=["python3", "-c", ECHO, *hostile],
            env=env,
            reduce={"command": ["python3", "-c", ECHO, *reversed(hostile)]},
        ),
        ["\n".join(hostile).encode() + b"\n"],
    )
    script = f"{hostile[0]}; {hostile[1]}; touch /tmp/pwned-IN-{token}; ls /tmp > /output/result"
    shell_job = probe_job(probe_image, name="hostile-shell", command=["sh", "-c", script], env=env)
    shell, _ = submit(master, shell_job, [b"x\n"])

    assert wait_job(master, echo, JOB_WAIT)["state"] == "done"
    assert wait_job(master, shell, JOB_WAIT)["state"] == "done"
    maps = [u for u in job_units(master, echo) if u["kind"] == "map"]
    (map_unit,) = maps
    seen = json.loads(partial_results(master, echo))
    assert seen == {"argv": list(reversed(hostile)), "env": env, "inputs": ["000000"]}, "the reduce step's view"
    assert map_unit["output"] == digest(json.dumps({"argv": hostile, "env": env, "inputs": ["chunk"]}).encode()), (
        "the map step saw every string as it was sent"
    )
    inside = partial_results(master, shell).decode().split()
    assert {f"pwned-X-{token}", f"pwned-Y-{token}", f"pwned-IN-{token}"} <= set(inside), inside

    assert markers() == [], "a hostile string ran on the host"
    assert daemon.alive, f"the daemon died:\n{daemon.log()}"
    (shown,) = [c for c in clients(master) if c["id"] == daemon.client]
    assert shown["name"] == name and shown["online"]
    assert daemon.stop() == 0
    assert markers() == []
