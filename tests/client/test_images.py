"""The offline image builder and the wordfreq workload: the word rules on the host, then the
real images built and run with the full sandbox the client daemon applies."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import docker
import pytest

from dockercomp.client import images
from dockercomp.protocol.jobfile import parse_jobfile
from tests.needs import skip_or_fail

WORKLOAD = images.workloads_dir() / "wordfreq"
WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
TEXT = (
    "The cat and the hat.\n"
    "Don't stop: the CAT's hat, o'clock l\u2019\u00e9t\u00e9 L'\u00c9t\u00e9!\n"
    "Stra\u00dfe strasse under_score x2 x2 3d\n"
    "caf\u00e9 caf\u00e9 \u03a9mega \u03c9mega\n"
)
RAW = TEXT.encode() + b"not utf-8: \xff\xfe bytes\n"  # replaced, never fatal
SANDBOX = {
    "network_mode": "none",
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "pids_limit": 64,
    "nano_cpus": 1_000_000_000,
    "mem_limit": "128m",
    "memswap_limit": "128m",
    "user": images.NONROOT_USER,
    "tmpfs": {"/tmp": "rw,noexec,nosuid,size=16m"},
    "labels": {"dockercomp.test": "images"},
}

log = logging.getLogger(__name__)


def expected_counts(text: str) -> Counter[str]:
    """The word rules, written again independently of the workload's code."""
    return Counter(m.group().casefold().replace("\u2019", "'") for m in WORD.finditer(text))


def as_lines(pairs: list[tuple[str, int]]) -> bytes:
    return "".join(f"{word}\t{count}\n" for word, count in pairs).encode()


def sample(size: str) -> bytes:
    return subprocess.run(
        [sys.executable, str(WORKLOAD / "sample.py"), "--size", size], capture_output=True, check=True
    ).stdout


def split_lines(data: bytes, parts: int) -> list[bytes]:
    lines = data.splitlines(keepends=True)
    step = -(-len(lines) // parts)
    return [b"".join(lines[i : i + step]) for i in range(0, len(lines), step)]


# --- without Docker -----------------------------------------------------------------------


def test_wordfreq_is_listed_and_its_job_file_is_valid() -> None:
    assert "wordfreq" in images.list_workloads()
    spec = parse_jobfile(json.loads((WORKLOAD / "job.json").read_text()))
    assert spec.image == images.workload_tag("wordfreq") == "dockercomp/wordfreq:latest"
    assert spec.command == ("python3", "/app/map.py")
    assert spec.reduce_command == ("python3", "/app/reduce.py")
    assert spec.chunking.by == "lines"


def test_list_workloads_wants_a_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "Dockerfile").write_text("FROM dockercomp/base:bookworm\n")
    (tmp_path / "no-dockerfile").mkdir()
    (tmp_path / "Bad Name").mkdir()
    (tmp_path / "Bad Name" / "Dockerfile").write_text("FROM scratch\n")
    assert images.list_workloads(tmp_path) == ["good"]
    assert images.list_workloads(tmp_path / "missing") == []


def test_unknown_workload_is_refused_before_docker_is_asked() -> None:
    client = mock.Mock(spec=docker.DockerClient)
    with pytest.raises(images.ImageError, match=r"no workload named 'nope'.*known: .*wordfreq"):
        images.build_workload(client, "nope")
    with pytest.raises(images.ImageError, match="no workload named"):
        images.build_workload(client, "../wordfreq")
    assert not client.mock_calls


def test_no_engine_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(images.ImageError, match=r"no Docker engine answers.*scripts/ensure-docker"):
        images.connect(timeout=5)


def test_a_registry_that_does_not_answer_costs_no_time() -> None:
    client = mock.Mock(spec=docker.DockerClient)
    started = time.monotonic()
    assert images._pull_base(client, "localhost:1/dockercomp/base:bookworm") is False
    assert time.monotonic() - started < images.REGISTRY_PROBE_TIMEOUT + 1
    assert not client.mock_calls


def test_map_and_reduce_on_the_host(tmp_path: Path) -> None:
    """The workload is plain Python: run it here on two chunks and compare."""
    first, second = RAW.splitlines(keepends=True)[:2], RAW.splitlines(keepends=True)[2:]
    (tmp_path / "reduce-in").mkdir()
    for index, lines in enumerate([first, second]):
        chunk = tmp_path / f"chunk{index}"
        chunk.write_bytes(b"".join(lines))
        result = tmp_path / "reduce-in" / f"{index:06d}"
        subprocess.run([sys.executable, str(WORKLOAD / "map.py"), str(chunk), str(result)], check=True)
        assert result.read_bytes() == as_lines(
            sorted(expected_counts(b"".join(lines).decode(errors="replace")).items())
        )
    subprocess.run(
        [sys.executable, str(WORKLOAD / "reduce.py"), str(tmp_path / "reduce-in"), str(tmp_path / "result")],
        check=True,
    )
    total = expected_counts(RAW.decode(errors="replace"))
    assert (tmp_path / "result").read_bytes() == as_lines(sorted(total.items(), key=lambda i: (-i[1], i[0])))
    assert total["the"] == 3 and total["cat's"] == 1 and total["strasse"] == 2 and total["l'\u00e9t\u00e9"] == 2
    assert total["bytes"] == 1 and total["x2"] == 2 and total["\u03c9mega"] == 2
    assert "under" in total and "score" in total and "\ufffd" not in total


def test_reduce_refuses_a_malformed_input(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "000000").write_text("word\tnot-a-number\n")
    run = subprocess.run(
        [sys.executable, str(WORKLOAD / "reduce.py"), str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "expected word<TAB>count" in run.stderr


# --- with Docker --------------------------------------------------------------------------


def run_unit(client: docker.DockerClient, image: str, command: list[str], inputs: Path, outputs: Path) -> bytes:
    """Run one unit the way the client daemon does: inputs read-only at /input, /output
    writable by the container's non-root user, everything else locked down."""
    outputs.mkdir()
    outputs.chmod(0o777)
    started = time.monotonic()
    container = client.containers.create(
        image,
        command,
        volumes={str(inputs): {"bind": "/input", "mode": "ro"}, str(outputs): {"bind": "/output", "mode": "rw"}},
        **SANDBOX,
    )
    try:
        container.start()
        status = container.wait(timeout=120)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    log.info("%s %s: %s in %.2fs: %s", image, command, status, time.monotonic() - started, logs.strip())
    assert status["StatusCode"] == 0, logs
    return (outputs / "result").read_bytes()


def test_base_image_is_cached_and_has_python(docker_client: docker.DockerClient, base_image: str) -> None:
    started = time.monotonic()
    assert images.ensure_base_image(docker_client) == images.BASE_IMAGE == base_image
    assert time.monotonic() - started < 5, "a present base image must not be rebuilt"
    image = docker_client.images.get(base_image)
    assert image.labels["dockercomp.image"] == "base"
    assert "PYTHONHASHSEED=0" in image.attrs["Config"]["Env"]
    out = docker_client.containers.run(
        base_image,
        ["python3", "-c", "import json, gzip, csv, statistics, sys; print(sys.version_info[0])"],
        remove=True,
        **SANDBOX,
    )
    assert out.strip() == b"3"


def test_base_image_reimports_from_the_cached_tarball(
    docker_client: docker.DockerClient, base_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once debootstrap ran, building the base again (a new machine image, a pruned engine)
    is an import of the cached tarball: seconds, no network. Imported under another name so
    the real base is left alone."""
    cached = list(images.cache_dir().glob(f"{images.SUITE}-minbase-*.tar"))
    if not cached:
        skip_or_fail("the base image was pulled, not built here: no cached tarball")
    monkeypatch.setattr(images, "BASE_REPOSITORY", "dockercomp/base-reimport-test")
    monkeypatch.setattr(images, "BASE_IMAGE", f"dockercomp/base-reimport-test:{images.SUITE}")
    try:
        started = time.monotonic()
        assert images.ensure_base_image(docker_client) == images.BASE_IMAGE
        log.info("re-import from the cached tarball took %.1fs", time.monotonic() - started)
        assert time.monotonic() - started < 120
    finally:
        docker_client.images.remove(images.BASE_IMAGE, force=True)


def test_sandbox_holds(docker_client: docker.DockerClient, wordfreq_image: str) -> None:
    script = (
        "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "touch /app/x 2>/dev/null && echo rootfs-writable || echo rootfs-readonly; "
        "echo ok > /tmp/probe && echo tmp-writable; ls /sys/class/net"
    )
    out = docker_client.containers.run(wordfreq_image, ["sh", "-c", script], remove=True, **SANDBOX).decode()
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["65534"]
    assert ["CapEff:", "0000000000000000"] in lines and ["NoNewPrivs:", "1"] in lines
    assert ["rootfs-readonly"] in lines and ["tmp-writable"] in lines
    assert lines[-1] == ["lo"], "no network but loopback"


def test_wordfreq_map_and_reduce_in_containers(
    docker_client: docker.DockerClient, wordfreq_image: str, tmp_path: Path
) -> None:
    data = sample("300KiB") + RAW
    chunks = split_lines(data, 3)
    reduce_in = tmp_path / "reduce-in"
    reduce_in.mkdir()
    for index, chunk in enumerate(chunks):
        unit = tmp_path / f"unit{index}"
        unit.mkdir()
        (unit / "chunk").write_bytes(chunk)
        result = run_unit(docker_client, wordfreq_image, ["python3", "/app/map.py"], unit, tmp_path / f"out{index}")
        assert result == as_lines(sorted(expected_counts(chunk.decode(errors="replace")).items()))
        (reduce_in / f"{index:06d}").write_bytes(result)
    result = run_unit(docker_client, wordfreq_image, ["python3", "/app/reduce.py"], reduce_in, tmp_path / "final")
    total = expected_counts(data.decode(errors="replace"))
    assert result == as_lines(sorted(total.items(), key=lambda i: (-i[1], i[0])))
    assert os.stat(tmp_path / "final" / "result").st_uid == 65534


def test_a_failing_unit_exits_non_zero(docker_client: docker.DockerClient, wordfreq_image: str, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "000000").write_text("no tab here\n")
    with pytest.raises(AssertionError, match="expected word<TAB>count"):
        run_unit(docker_client, wordfreq_image, ["python3", "/app/reduce.py"], tmp_path / "in", tmp_path / "out")
