"""The kmers workload end to end: its own job file, submitted with the scientist's commands to
a real master, computed by two real daemons in real containers; the answer is checked
against k-mers counted here, by a reading of FASTA written for this test."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import pytest

from dockercomp.client import images
from dockercomp.protocol.chunking import chunk_inputs
from dockercomp.protocol.jobfile import parse_jobfile
from tests.needs import skip_or_fail

from .cluster import Daemons, cli, job_units, wait_job

pytestmark = pytest.mark.slow

JOB_WAIT = 90.0
WORKLOAD = images.workloads_dir() / "kmers"
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}


@pytest.fixture(scope="module")
def kmers_image(docker_client: docker.DockerClient) -> str:
    try:
        return images.build_workload(docker_client, "kmers")
    except images.ImageError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"cannot build the kmers image: {exc} (CI is set, so this is an error, not a skip)")
        skip_or_fail(f"cannot build the kmers image: {exc}")


def sample_fasta(path: Path, size: str, seed: int) -> Path:
    with open(path, "wb") as out:
        command = [sys.executable, str(WORKLOAD / "sample.py"), "--size", size, "--seed", str(seed)]
        subprocess.run(command, stdout=out, check=True)
    return path


def expected_counts(fasta: Path, k: int, canonical: bool) -> bytes:
    """The job's answer, computed here: each record's sequence joined whole, every window of k
    letters checked on its own, the result ranked most frequent first, ties by k-mer."""
    records: list[list[str]] = []
    for line in fasta.read_text(encoding="ascii").splitlines():
        if line.startswith(">") or not records:  # text before the first header: a record of its own
            records.append([])
            if line.startswith(">"):
                continue
        if not line.startswith(";"):
            records[-1].append("".join(line.split()).upper())
    counts: Counter[str] = Counter()
    for sequence in ("".join(lines) for lines in records):
        for i in range(len(sequence) - k + 1):
            window = sequence[i : i + k]
            if all(letter in COMPLEMENT for letter in window):
                if canonical:
                    window = min(window, "".join(COMPLEMENT[letter] for letter in reversed(window)))
                counts[window] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "".join(f"{kmer}\t{n}\n" for kmer, n in ranked).encode()


def kmers_job(**sections: Any) -> dict[str, Any]:
    job = json.loads((WORKLOAD / "job.json").read_text())
    return job | sections


def test_kmers_on_two_daemons_gives_the_counts_computed_here(
    master: Any, daemons: Daemons, kmers_image: str, tmp_path: Path
) -> None:
    """Two jobs on the same two volunteers: 5-mers as written, every unit computed by both
    volunteers with identical outputs; then canonical 3-mers (a k-mer and its reverse
    complement together). Records are never split between units, and both results are the
    counts made here from the whole file."""
    fasta = sample_fasta(tmp_path / "sample.fa", "160KiB", seed=5)
    forward = tmp_path / "forward.json"
    forward.write_text(
        json.dumps(
            kmers_job(
                env={"K": "5", "CANONICAL": "0"},
                chunking={"by": "records", "size": "12KiB", "separator": ">"},
                redundancy={"replicas": 2, "quorum": 2, "max_attempts": 4},
            )
        )
    )
    folded = tmp_path / "canonical.json"
    folded.write_text(json.dumps(kmers_job(env={"K": "3", "CANONICAL": "1"}, chunking={"by": "records", "size": 15})))
    one, two = daemons.start(master, "one"), daemons.start(master, "two")

    jobs = []
    for jobfile in (forward, folded):
        submitted = cli("submit", str(jobfile), str(fasta), "--json", master=master)
        assert submitted.returncode == 0, submitted.stderr
        jobs.append(json.loads(submitted.stdout)["job"])
    for job, jobfile, k, canonical in zip(jobs, (forward, folded), (5, 3), (False, True), strict=True):
        assert wait_job(master, job, JOB_WAIT)["state"] == "done"
        out = tmp_path / f"{job}.tsv"
        downloaded = cli("results", job, "-o", str(out), master=master)
        assert downloaded.returncode == 0, downloaded.stderr
        assert out.read_bytes() == expected_counts(fasta, k, canonical)

        chunks = list(chunk_inputs([str(fasta)], parse_jobfile(json.loads(jobfile.read_text())).chunking))
        assert all(chunk.startswith(b">") for chunk in chunks), "a unit began inside a record"
        assert b"".join(chunks) == fasta.read_bytes()
        units = job_units(master, job)
        assert [u["kind"] for u in units].count("map") == len(chunks) >= 4
        assert all(u["state"] == "done" for u in units), units

    for unit in job_units(master, jobs[0]):
        succeeded = [a for a in unit["attempts"] if a["state"] == "succeeded"]
        assert sorted(a["client"] for a in succeeded) == sorted([one.client, two.client]), unit
        assert all(a["validity"] == "valid" and a["output"] == unit["output"] for a in succeeded), unit
