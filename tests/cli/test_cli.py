"""The scientist's CLI, run as real subprocesses against a real master whose units are
computed by simulated clients. Exit codes: 0 success, 1 the operation failed, 2 bad usage or
bad input."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dockercomp.cli import JOB_VERBS
from dockercomp.server.lifecycle import Verb
from tests.masters import MasterProcess, Masters
from tests.needs import skip_or_fail
from tests.sim import Fleet, SimClient, compute, job_file, job_status, wait_for, wait_job

UNIT_STATES = {"ready", "running", "done", "failed", "cancelled", "suspended"}
TOKEN: dict[str, str] = {}  # DOCKERCOMP_TOKEN for every command: the module master's operator


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """A master with three honest simulated clients working for it the whole time."""
    masters = Masters(tmp_path_factory.mktemp("cli"))
    master = masters.start("--reap-interval", "0.2")
    TOKEN["DOCKERCOMP_TOKEN"] = master.token
    with Fleet([SimClient(master.url, name=f"sim-{i}", idle_wait=0.05) for i in range(3)]):
        yield master
    masters.close()


def dockercomp(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DC_HOST", "DC_PORT") and not k.startswith("DOCKERCOMP_")}
    result = subprocess.run(
        [sys.executable, "-m", "dockercomp", *args],
        capture_output=True,
        text=True,
        env=base | TOKEN | (env or {}),
        cwd=cwd,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def submit(master: MasterProcess, jobfile: Path, *inputs: Path) -> str:
    """Submit with the CLI; the new job's id."""
    result = dockercomp("submit", str(jobfile), *map(str, inputs), "--server", master.url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["job"]


def write(path: Path, data: object) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A job file splitting lines two by two, and two input files."""
    return {
        "job": write(tmp_path / "job.json", job_file("cli", chunking={"by": "lines", "size": 2})),
        "in1": write(tmp_path / "in1.txt", b"alpha\nbeta\ngamma\n"),
        "in2": write(tmp_path / "in2.txt", b"delta\nepsilon\n"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- success -----------------------------------------------------------------------------------


def test_submit_json_prints_the_job_id(master, files):
    result = dockercomp(
        "submit", str(files["job"]), str(files["in1"]), str(files["in2"]), "--server", master.url, "--json"
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert list(reply) == ["job"]
    status = wait_job(master.url, reply["job"])
    assert status["state"] == "done" and status["name"] == "cli"
    assert sum(status["units"].values()) == 3  # [alpha, beta] [gamma] [delta, epsilon]: a chunk never spans files


def test_submit_wait_follows_the_job_to_its_end(master, files):
    result = dockercomp("submit", str(files["job"]), str(files["in1"]), "--server", master.url, "--wait", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert set(reply) == {"job", "state", "units"}
    assert reply["state"] == "done" and reply["units"]["done"] == 2 and set(reply["units"]) == UNIT_STATES
    text = dockercomp("submit", str(files["job"]), str(files["in2"]), "--server", master.url, "--wait")
    assert text.returncode == 0, text.stderr
    assert "done" in text.stdout and "units: 1 done" in text.stdout


def test_submit_can_let_the_master_chunk_the_input(master, files):
    args = ("submit", str(files["job"]), str(files["in1"]), "--chunk-on-master", "--server", master.url, "--json")
    result = dockercomp(*args)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)["job"]
    assert wait_job(master.url, job)["units"]["done"] == 2


def test_status_json_shape(master, files):
    job = submit(master, files["job"], files["in1"])
    wait_job(master.url, job)
    result = dockercomp("status", job, "--server", master.url, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) == {"job", "name", "state", "drmaa2", "units", "unrunnable"}
    assert (status["job"], status["state"], status["drmaa2"], status["unrunnable"]) == (job, "done", "Done", None)
    assert status["units"] == {**dict.fromkeys(UNIT_STATES, 0), "done": 2}
    text = dockercomp("status", job, "--server", master.url)
    assert text.returncode == 0 and job in text.stdout and "2 done" in text.stdout and "(DRMAA2 Done)" in text.stdout


def test_every_job_verb_is_a_command(master, files):
    assert set(JOB_VERBS) == {v.value for v in Verb}
    job = submit(master, files["job"], files["in1"])
    wait_job(master.url, job)
    refused = dockercomp("resume", job, "--server", master.url)
    assert refused.returncode == 2 and "is done (DRMAA2 Done): it cannot be resumed" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_results_writes_the_outputs_in_unit_order(master, files, tmp_path):
    inputs = [files["in1"], files["in2"]]
    job = submit(master, files["job"], *inputs)
    wait_job(master.url, job)
    out = tmp_path / "result.txt"
    result = dockercomp("results", job, "-o", str(out), "--server", master.url)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"ALPHA\nBETA\nGAMMA\nDELTA\nEPSILON\n"
    to_stdout = dockercomp("results", job, "-o", "-", "--server", master.url)
    assert to_stdout.returncode == 0 and to_stdout.stdout == "ALPHA\nBETA\nGAMMA\nDELTA\nEPSILON\n"


def test_results_of_a_job_with_a_reduce_step_are_the_reduce_output(master, files, tmp_path):
    spec = job_file("cli-reduce", chunking={"by": "lines", "size": 1}, reduce={"command": ["sim", "--reduce"]})
    jobfile = write(tmp_path / "reduce.json", spec)
    job = submit(master, jobfile, files["in1"])
    assert wait_job(master.url, job)["state"] == "done"
    out = tmp_path / "reduced.txt"
    assert dockercomp("results", job, "-o", str(out), "--server", master.url).returncode == 0
    maps = [compute("map", [line]) for line in (b"alpha\n", b"beta\n", b"gamma\n")]
    assert out.read_bytes() == compute("reduce", maps)


def test_jobs_and_clients_are_listed(master, files):
    job = submit(master, files["job"], files["in2"])
    jobs = dockercomp("jobs", "--server", master.url)
    assert jobs.returncode == 0, jobs.stderr
    header, *rows = jobs.stdout.splitlines()
    assert header.split() == ["JOB", "NAME", "STATE", "UNITS", "OWNER", "CREATED"]
    assert rows[0].split()[:2] == [job, "cli"]  # newest first
    listed = json.loads(dockercomp("jobs", "--server", master.url, "--json").stdout)["jobs"]
    assert listed[0]["id"] == job
    clients = dockercomp("clients", "--server", master.url, "--json")
    assert clients.returncode == 0, clients.stderr
    names = {c["name"]: c for c in json.loads(clients.stdout)["clients"]}
    assert {"sim-0", "sim-1", "sim-2"} <= set(names)
    assert all(names[n]["online"] and names[n]["reliability"] == 1.0 for n in ("sim-0", "sim-1", "sim-2"))
    table = dockercomp("clients", "--server", master.url)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["CLIENT", "NAME", "STATE"]


def test_the_server_defaults_to_dc_host_and_dc_port(master, files):
    job = submit(master, files["job"], files["in2"])
    env = {"DC_HOST": "127.0.0.1", "DC_PORT": str(master.port)}
    result = dockercomp("status", job, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["job"] == job
    submitted = dockercomp("submit", str(files["job"]), str(files["in2"]), "--json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert job_status(master.url, json.loads(submitted.stdout)["job"])["name"] == "cli"


def test_without_dc_host_and_dc_port_the_server_is_local_port_8080(files):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            skip_or_fail("something listens on 127.0.0.1:8080")
    for env in ({}, {"DC_HOST": "127.0.0.1"}):  # both are needed
        result = dockercomp("jobs", env=env)
        assert result.returncode == 1
        assert "cannot reach the master at http://127.0.0.1:8080" in result.stderr


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "is not valid JSON"),
        (json.dumps({"name": "x"}).encode(), "image is required"),
        (json.dumps(job_file(chunking={"by": "lines", "size": 0})).encode(), "chunking.size must be greater than zero"),
        (json.dumps(job_file(redundancy={"replicas": 1, "quorum": 3})).encode(), "quorum"),
    ],
)
def test_a_bad_job_file_is_exit_code_2(master, files, tmp_path, content, fragment):
    before = requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"]
    jobfile = write(tmp_path / "bad.json", content)
    result = dockercomp("submit", str(jobfile), str(files["in1"]), "--server", master.url)
    assert result.returncode == 2
    assert result.stderr.startswith("dockercomp: ") and fragment in result.stderr
    assert requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"] == before


def test_a_missing_job_file_or_input_is_exit_code_2(master, files, tmp_path):
    missing = str(tmp_path / "missing.json")
    result = dockercomp("submit", missing, str(files["in1"]), "--server", master.url)
    assert result.returncode == 2 and "cannot read job file" in result.stderr
    result = dockercomp("submit", str(files["job"]), str(tmp_path / "nope.txt"), "--server", master.url)
    assert result.returncode == 2 and "nope.txt is not a readable file" in result.stderr


@pytest.mark.parametrize("on_master", [False, True])
def test_an_empty_input_is_exit_code_2(master, files, tmp_path, on_master):
    before = requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"]
    empty = write(tmp_path / "empty.txt", b"")
    args = ["submit", str(files["job"]), str(empty), "--server", master.url] + (
        ["--chunk-on-master"] if on_master else []
    )
    result = dockercomp(*args)
    assert result.returncode == 2 and "empty" in result.stderr
    assert requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"] == before


def test_bad_usage_is_exit_code_2(master):
    for args in (["submit"], ["status"], ["results", "job"], ["frobnicate"], []):
        result = dockercomp(*args)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_an_unknown_job_is_exit_code_2(master, tmp_path):
    for args in (["status", "nosuchjob"], ["results", "nosuchjob", "-o", str(tmp_path / "x")]):
        result = dockercomp(*args, "--server", master.url)
        assert result.returncode == 2 and "no job 'nosuchjob'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_unreachable_master_is_exit_code_1(files):
    server = f"http://127.0.0.1:{free_port()}"
    for args in (["status", "job"], ["jobs"], ["clients"], ["submit", str(files["job"]), str(files["in1"])]):
        result = dockercomp(*args, "--server", server)
        assert result.returncode == 1, (args, result.stderr)
        assert f"cannot reach the master at {server}" in result.stderr


def test_results_of_an_unfinished_job_are_exit_code_1(master, tmp_path):
    # no simulated client has 64 cpus free, so this job never runs
    jobfile = write(tmp_path / "big.json", job_file("too-big", resources={"cpus": 64}))
    data = write(tmp_path / "data.txt", b"x\n")
    job = submit(master, jobfile, data)
    out = tmp_path / "result.txt"
    result = dockercomp("results", job, "-o", str(out), "--server", master.url)
    assert result.returncode == 1
    assert "is running" in result.stderr and "wait for it" in result.stderr
    assert not out.exists()
    partial = dockercomp("results", job, "-o", str(out), "--partial", "--server", master.url)
    assert partial.returncode == 0 and out.read_bytes() == b""


def test_submit_wait_for_a_job_that_fails_is_exit_code_1(master, tmp_path):
    spec = job_file("doomed", priority=1000, resources={"cpus": 64}, redundancy={"replicas": 1, "max_attempts": 1})
    jobfile = write(tmp_path / "doomed.json", spec)
    data = write(tmp_path / "data.txt", b"x\n")
    args = [sys.executable, "-m", "dockercomp", "submit", str(jobfile), str(data), "--server", master.url, "--wait"]
    env = os.environ | TOKEN
    with subprocess.Popen(
        [*args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        jobs = wait_for(
            lambda: [
                j
                for j in requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"]
                if j["name"] == "doomed"
            ],
            30,
            "the job to be created",
        )
        (job,) = jobs
        client = SimClient(master.url, name="failing", slots=32)  # room for 64 cpus (twice its slots)
        client.register()
        (grant,) = client.lease(1, cpus=64.0)
        assert grant["job"] == job["id"]
        client.upload([{"attempt": grant["attempt"], "status": "errored", "error": "exit_nonzero", "exit_code": 2}])
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert json.loads(out) == {
        "job": job["id"],
        "state": "failed",
        "units": {**dict.fromkeys(UNIT_STATES, 0), "failed": 1},
    }


def test_an_unwritable_output_or_a_malformed_server_url_is_exit_code_2(master, files, tmp_path):
    job = submit(master, files["job"], files["in2"])
    wait_job(master.url, job)
    result = dockercomp("results", job, "-o", str(tmp_path / "no" / "such" / "dir"), "--server", master.url)
    assert result.returncode == 2 and "cannot write" in result.stderr
    for server, env in (("not-a-url", {}), (None, {"DC_HOST": "127.0.0.1", "DC_PORT": "eighty"})):
        result = dockercomp("jobs", *(["--server", server] if server else []), env=env)
        assert result.returncode == 2 and "is not a master URL" in result.stderr


# -- sweeps ------------------------------------------------------------------------------------


def test_a_sweep_job_is_submitted_without_inputs(master, tmp_path):
    jobfile = write(tmp_path / "sweep.json", job_file("sweep", sweep={"start": 0, "end": 5, "step": 2}))
    result = dockercomp("submit", str(jobfile), "--server", master.url, "--wait")
    assert result.returncode == 0, result.stderr
    assert "units: 3 done" in result.stdout and ": 3 units" in result.stderr
    job = result.stdout.split()[1]
    out = tmp_path / "out.txt"
    assert dockercomp("results", job, "-o", str(out), "--server", master.url).returncode == 0
    params = [{"START": 0, "END": 2}, {"START": 2, "END": 4}, {"START": 4, "END": 5}]
    expected = b"".join(compute("map", [json.dumps(p, sort_keys=True).encode() + b"\n"]) for p in params)
    assert out.read_bytes() == expected


def test_inputs_for_a_sweep_or_none_for_other_jobs_are_exit_code_2(master, files, tmp_path):
    before = requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"]
    jobfile = write(tmp_path / "sweep.json", job_file("sweep", sweep=[{"A": 1}]))
    result = dockercomp("submit", str(jobfile), str(files["in1"]), "--server", master.url)
    assert result.returncode == 2 and "is a sweep" in result.stderr and "not INPUT files" in result.stderr
    result = dockercomp("submit", str(files["job"]), "--server", master.url)
    assert result.returncode == 2 and "give the INPUT files" in result.stderr
    bad = write(tmp_path / "bad.json", job_file("sweep", sweep={"start": 3, "end": 1}))
    result = dockercomp("submit", str(bad), "--server", master.url)
    assert result.returncode == 2 and "sweep.end (1) must be greater than sweep.start (3)" in result.stderr
    assert requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"] == before


def test_submit_refuses_an_image_not_pushed_to_the_master_and_creates_nothing(master, tmp_path):
    jobfile = write(tmp_path / "job.json", {"name": "nosuch", "image": "dockercomp/unknown"})
    data = write(tmp_path / "data.txt", b"x\n")
    result = dockercomp("submit", str(jobfile), str(data), "--server", master.url)
    assert result.returncode == 2, result.stderr
    assert "no image 'dockercomp/unknown'" in result.stderr and "push it first" in result.stderr
    assert [
        j for j in requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"] if j["name"] == "nosuch"
    ] == []


def test_store_migrate_brings_a_new_store_up_says_so_and_refuses_a_newer_one(tmp_path):
    data = tmp_path / "data"
    dry = dockercomp("store", "migrate", "--data-dir", str(data), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) | {"steps": []} == {
        "backend": "sqlite", "from_version": 0, "to_version": 0, "steps": [], "dry_run": True,
    }  # fmt: skip
    assert not (data / "dockercomp.db").exists(), "a dry run made the database"
    done = dockercomp("store", "migrate", "--data-dir", str(data))
    assert done.returncode == 0 and "migrated from version 0 to 1" in done.stdout, done.stderr
    again = dockercomp("store", "migrate", "--store", f"sqlite:///{data}/dockercomp.db", "--json")
    assert json.loads(again.stdout)["steps"] == [] and json.loads(again.stdout)["to_version"] == 1
    db = sqlite3.connect(data / "dockercomp.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    newer = dockercomp("store", "migrate", "--data-dir", str(data))
    assert newer.returncode == 1 and "schema version 99, newer than" in newer.stderr and "Traceback" not in newer.stderr
    wrong = dockercomp("store", "migrate", "--store", "redis://x")
    assert wrong.returncode == 2 and "sqlite:///PATH" in wrong.stderr
