"""``dockercomp workloads``: list, and run a workload here without a master, run as real
subprocesses with real containers. Exit codes: 0 success, 1 a unit (or Docker) failed, 2 bad
usage or bad input. The Docker-backed tests skip without an engine but FAIL when the CI
environment variable is set, so a green CI means they really ran."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import docker
import docker.errors
import pytest

from dockercomp.client import images
from dockercomp.client.runner import LABEL_CLIENT
from dockercomp.protocol.chunking import chunk_inputs
from dockercomp.protocol.jobfile import parse_jobfile
from tests.fixtures.docker import workload_image

WORKLOADS = images.workloads_dir()
ACGT = set("ACGT")


@pytest.fixture(scope="module")
def kmers_image(docker_client: docker.DockerClient) -> str:
    return workload_image(docker_client, "kmers")


@pytest.fixture(scope="module")
def imagefilter_image(docker_client: docker.DockerClient) -> str:
    return workload_image(docker_client, "imagefilter")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """The TMPDIR of the runs: where their scratch directories go, and must be gone from."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path


def dockercomp(*args: str, scratch: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}
    if scratch is not None:
        env["TMPDIR"] = str(scratch)
    result = subprocess.run(
        [sys.executable, "-m", "dockercomp", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ours(docker_client: docker.DockerClient) -> list[dict]:
    return docker_client.api.containers(all=True, filters={"label": f"{LABEL_CLIENT}=local"})


def fasta(path: Path, size: str, seed: int = 1) -> Path:
    with open(path, "wb") as out:
        command = [sys.executable, str(WORKLOADS / "kmers" / "sample.py"), "--size", size, "--seed", str(seed)]
        subprocess.run(command, stdout=out, check=True)
    return path


def count(text: bytes, k: int) -> Counter[str]:
    """k-mers of FASTA text, counted here: each record whole, each window checked."""
    counts: Counter[str] = Counter()
    for record in text.decode().split(">")[1:]:
        sequence = "".join(record.split("\n", 1)[1].split()).upper()
        counts.update(w for i in range(len(sequence) - k + 1) if set(w := sequence[i : i + k]) <= ACGT)
    return counts


# -- without Docker ------------------------------------------------------------------------------


def test_list_shows_every_workload_with_its_tag_and_description() -> None:
    result = dockercomp("workloads", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    assert {"wordfreq", "kmers", "imagefilter"} <= set(rows)
    for name in ("kmers", "imagefilter"):
        assert rows[name][1] == images.workload_tag(name)
        assert json.loads((WORKLOADS / name / "job.json").read_text())["image"] == rows[name][1]
    assert "k-mer" in rows["kmers"][2] and "images" in rows["imagefilter"][2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "--input", "x"), "no workload named 'nope'"),
        (("kmers", "--input", "/nonexistent/sample.fa"), "input /nonexistent/sample.fa is not a readable file"),
        (("kmers",), "no input given"),
        (("kmers", "--input", "{fa}", "--env", "K"), "--env takes NAME=VALUE"),
        (("kmers", "--input", "{fa}", "--env", "1X=2"), "variable name '1X'"),
        (("kmers", "--input", "{fa}", "--slots", "0"), "--slots must be at least 1"),
        (("kmers", "--input", "{empty}"), "input directory"),
    ],
)
def test_bad_usage_exits_2_with_a_message_and_writes_nothing(
    tmp_path: Path, scratch: Path, args: tuple[str, ...], message: str
) -> None:
    sample = tmp_path / "sample.fa"
    sample.write_text(">r\nACGT\n")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.tsv"
    args = tuple(a.format(fa=sample, empty=tmp_path / "empty") for a in args)
    result = dockercomp("workloads", "run", *args, "-o", str(out), scratch=scratch)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert not out.exists() and not list(tmp_path.glob("out.tsv*")) and not list(scratch.iterdir())


# -- with Docker ---------------------------------------------------------------------------------


def test_run_kmers_gives_the_counts_computed_here(
    kmers_image: str, docker_client: docker.DockerClient, tmp_path: Path, scratch: Path
) -> None:
    """Records chunked as the job file says (several units, two at a time), the reduce over
    them: the result is the 6-mer count of the whole file, most frequent first."""
    sample = fasta(tmp_path / "sample.fa", "600KiB")
    out = tmp_path / "counts.tsv"
    result = dockercomp("workloads", "run", "kmers", "--input", str(sample), "-o", str(out), "--slots", "2",
                        scratch=scratch)  # fmt: skip
    assert result.returncode == 0, result.stderr
    counts = count(sample.read_bytes(), 6)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    assert out.read_text() == "".join(f"{kmer}\t{n}\n" for kmer, n in ranked)
    spec = parse_jobfile(json.loads((WORKLOADS / "kmers" / "job.json").read_text()))
    units = len(list(chunk_inputs([str(sample)], spec.chunking)))
    assert units >= 2 and f"kmers: {units} map units and a reduce" in result.stderr
    assert not ours(docker_client) and not list(scratch.iterdir()) and not list(tmp_path.glob("*.partial"))


def test_run_with_env_and_no_reduce_writes_each_units_map_output_in_order(
    kmers_image: str, tmp_path: Path, scratch: Path
) -> None:
    """--env K=2 over the job's env; --no-reduce: the map outputs concatenated in unit order,
    each a unit's 2-mers sorted by k-mer, to standard output."""
    sample = fasta(tmp_path / "sample.fa", "300KiB", seed=2)
    result = dockercomp("workloads", "run", "kmers", "-i", str(sample), "--env", "K=2", "--no-reduce",
                        scratch=scratch)  # fmt: skip
    assert result.returncode == 0, result.stderr
    spec = parse_jobfile(json.loads((WORKLOADS / "kmers" / "job.json").read_text()))
    chunks = list(chunk_inputs([str(sample)], spec.chunking))
    assert len(chunks) == 2
    expected = "".join(f"{kmer}\t{n}\n" for chunk in chunks for kmer, n in sorted(count(chunk, 2).items()))
    assert result.stdout == expected
    assert "kmers: 2 map units in" in result.stderr


def test_a_failing_unit_exits_1_with_its_stderr_and_leaves_nothing(
    kmers_image: str, docker_client: docker.DockerClient, tmp_path: Path, scratch: Path
) -> None:
    sample = fasta(tmp_path / "sample.fa", "100KiB")
    out = tmp_path / "out.tsv"
    result = dockercomp("workloads", "run", "kmers", "-i", str(sample), "--env", "K=40", "-o", str(out),
                        scratch=scratch)  # fmt: skip
    assert result.returncode == 1, result
    assert "map-000000 failed: exit_nonzero (exit code 2)" in result.stderr
    assert "K must be a whole number from 1 to 32, got '40'" in result.stderr
    assert not list(tmp_path.glob("out.tsv*")) and not ours(docker_client) and not list(scratch.iterdir())


def test_input_the_chunking_cannot_cut_exits_2(kmers_image: str, tmp_path: Path, scratch: Path) -> None:
    text = tmp_path / "not.fa"
    text.write_text("ACGT\nACGT\n")
    result = dockercomp("workloads", "run", "kmers", "-i", str(text), scratch=scratch)
    assert result.returncode == 2
    assert "no record separator '>'" in result.stderr


def test_ctrl_c_stops_the_containers_and_removes_everything(
    kmers_image: str, docker_client: docker.DockerClient, tmp_path: Path, scratch: Path
) -> None:
    sample = fasta(tmp_path / "big.fa", "8MiB")
    out = tmp_path / "out.tsv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")} | {"TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockercomp", "workloads", "run", "kmers", "-i", str(sample), "-o", str(out)],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not [c for c in ours(docker_client) if c["State"] == "running"]:
            assert proc.poll() is None and time.monotonic() < deadline, "no container ran"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not ours(docker_client) and not list(scratch.iterdir()) and not list(tmp_path.glob("out.tsv*"))


def test_run_imagefilter_gives_a_tar_of_grayscale_pngs_named_after_the_inputs(
    imagefilter_image: str, tmp_path: Path, scratch: Path
) -> None:
    """A directory stands for its files, in name order; two inputs with one stem get -2."""
    pictures = tmp_path / "pictures"
    sample = [sys.executable, str(WORKLOADS / "imagefilter" / "sample.py"), "--out", str(pictures)]
    subprocess.run([*sample, "--count", "5", "--max-size", "64"], check=True, capture_output=True)
    (pictures / "img0001.png").write_bytes((pictures / "img0000.png").read_bytes())  # img0001.ppm's stem
    out = tmp_path / "edges.tar"
    result = dockercomp("workloads", "run", "imagefilter", "-i", str(pictures), "-o", str(out), scratch=scratch)
    assert result.returncode == 0, result.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
        heads = [tar.extractfile(m).read()[:26] for m in tar.getmembers()]  # type: ignore[union-attr]
    stems = [p.stem for p in sorted(pictures.iterdir())]
    assert stems == ["img0000", "img0001", "img0001", "img0002", "img0003-gray", "img0004"]
    assert names == ["img0000.png", "img0001.png", "img0001-2.png", "img0002.png", "img0003-gray.png", "img0004.png"]
    assert all(h.startswith(b"\x89PNG\r\n\x1a\n") and h[24:26] == b"\x08\x00" for h in heads), "8-bit gray PNGs"


def test_a_file_that_is_not_an_image_fails_its_unit_naming_it(
    imagefilter_image: str, tmp_path: Path, scratch: Path
) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "a.pgm").write_bytes(b"P5\n2 2\n255\n\x00\x10\x20\x30")
    (pictures / "notes.txt").write_text("not a picture\n")
    result = dockercomp("workloads", "run", "imagefilter", "-i", str(pictures), scratch=scratch)
    assert result.returncode == 1
    assert "notes.txt: not an image Pillow can read (unknown format)" in result.stderr
    assert result.stdout == ""


SWEEP_MAP = (
    "import json, os\n"
    "params = json.load(open('/input/params.json'))\n"
    "json.dump({'params': params, 'env': {k: os.environ[k] for k in ('X', 'MODE')}}, open('/output/result', 'w'))\n"
)
SWEEP_REDUCE = "import os\nopen('/output/result', 'w').write(' '.join(sorted(os.listdir('/input'))))\n"


def test_a_sweep_runs_one_unit_per_parameter_set_without_input(
    docker_client: docker.DockerClient, tmp_path: Path, scratch: Path
) -> None:
    """A workload whose job is a parameter sweep: each unit gets its parameters as
    /input/params.json and as variables over the job's env, as the master issues them."""
    name = f"run-sweep-{os.getpid()}"
    folder = tmp_path / "workloads" / name
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM dockercomp/base:bookworm\nUSER 65534:65534\n")
    job = {
        "name": name,
        "image": images.workload_tag(name),
        "command": ["python3", "-c", SWEEP_MAP],
        "env": {"MODE": "fast", "X": "job"},
        "sweep": [{"X": 1}, {"X": "two", "MODE": "slow"}],
        "reduce": {"command": ["python3", "-c", SWEEP_REDUCE]},
        "resources": {"memory": "64MiB", "timeout": "30s"},
    }
    (folder / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}
    env |= {"DOCKERCOMP_WORKLOADS": str(tmp_path / "workloads"), "TMPDIR": str(scratch)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dockercomp", "--log-level", "warning", "workloads", "run", name, *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)

    try:
        with_input = run("--input", str(folder / "job.json"))
        assert with_input.returncode == 2 and "parameter sweep" in with_input.stderr
        maps = run("--no-reduce")
        assert maps.returncode == 0, maps.stderr
        assert maps.stdout == json.dumps({"params": {"X": 1}, "env": {"X": "1", "MODE": "fast"}}) + json.dumps(
            {"params": {"MODE": "slow", "X": "two"}, "env": {"X": "two", "MODE": "slow"}}
        )
        reduced = run()
        assert reduced.returncode == 0, reduced.stderr
        assert reduced.stdout == "000000 000001"
        assert not list(scratch.iterdir())
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(images.workload_tag(name))
