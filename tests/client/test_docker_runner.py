"""DockerRunner against the real engine: every outcome, the sandbox as the container sees it,
labels and limits as `docker inspect` shows them, cleanup after every kind of end, and
hostile strings from the master that must never reach a shell on this host."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import docker
import pytest

from dockercomp.client import images
from dockercomp.client.docker_runner import DockerRunner
from dockercomp.client.runner import LABEL_ATTEMPT, LABEL_CLIENT, LABEL_JOB, LABEL_UNIT, RunOutcome, RunSpec
from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.protocol.messages import ErrorKind

MIB = 1024 * 1024
# One client label per test session, so the checks below never see another session's containers.
CLIENT = f"test-runner-{uuid.uuid4().hex[:10]}"

log = logging.getLogger(__name__)


def ours(docker_client: docker.DockerClient, client: str = CLIENT) -> list[str]:
    """Ids of this session's containers, as `docker ps -a --filter label=...` lists them."""
    return [c.id for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL_CLIENT}={client}"})]


@pytest.fixture
def runner(docker_client: docker.DockerClient, base_image: str) -> Iterator[DockerRunner]:
    """A runner; after the test, none of the session's containers may be left."""
    yield DockerRunner(docker_client)
    left = ours(docker_client)
    for container_id in left:
        docker_client.api.remove_container(container_id, force=True)
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., RunSpec]:
    """RunSpec factory: a fresh input and output directory per spec, the base image, small limits."""
    counter = iter(range(1_000_000))

    def make(command: list[str], **overrides: object) -> RunSpec:
        n = next(counter)
        inputs, outputs = tmp_path / f"in{n}", tmp_path / f"out{n}"
        inputs.mkdir()
        outputs.mkdir()
        (inputs / "chunk").write_text("some input\n")
        fields: dict[str, object] = {
            "client": CLIENT,
            "attempt": f"attempt-{n}",
            "job": "job-1",
            "unit": f"unit-{n}",
            "image": images.BASE_IMAGE,
            "command": tuple(command),
            "env": (("GREETING", "hello"),),
            "cpus": 0.5,
            "memory": 96 * MIB,
            "timeout": 30.0,
            "input_dir": str(inputs),
            "output_dir": str(outputs),
        }
        fields.update(overrides)
        return RunSpec(**fields)  # type: ignore[arg-type]

    return make


def result_of(spec: RunSpec) -> str:
    return (Path(spec.output_dir) / "result").read_text()


class Background:
    """``runner.run`` on its own thread, as a daemon worker slot calls it."""

    def __init__(self, runner: DockerRunner, spec: RunSpec, cancel: threading.Event | None = None) -> None:
        self.outcome: RunOutcome | None = None
        self._thread = threading.Thread(target=self._run, args=(runner, spec, cancel or threading.Event()))
        self._thread.start()

    def _run(self, runner: DockerRunner, spec: RunSpec, cancel: threading.Event) -> None:
        self.outcome = runner.run(spec, cancel)

    def join(self, timeout: float = 30.0) -> RunOutcome:
        self._thread.join(timeout)
        assert self.outcome is not None, "run() did not return"
        return self.outcome


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# A unit that holds ~24 MiB and waits for the test to drop /input/go before it finishes, so
# the test can look at it while it runs.
HANDSHAKE = (
    "import os, sys, time\n"
    "hold = bytearray(24 * 1024 * 1024)\n"
    "for i in range(0, len(hold), 4096): hold[i] = 1\n"
    "open('/output/started', 'w').close()\n"
    "while not os.path.exists('/input/go'): time.sleep(0.05)\n"
    "open('/output/result', 'w').write(os.environ['GREETING'] + ' ' + open('/input/chunk').read())\n"
    "print('done', file=sys.stderr)\n"
)


# --- outcomes -----------------------------------------------------------------------------


def test_success_with_labels_limits_and_live_containers(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    """Two units at once: both listed by containers() with their limits and use, labelled and
    limited as `docker inspect` shows, and both results written."""
    specs = [
        make_spec(["python3", "-c", HANDSHAKE], cpus=0.5, memory=96 * MIB),
        make_spec(["python3", "-c", HANDSHAKE]),
    ]
    runs = [Background(runner, spec) for spec in specs]
    for spec in specs:
        wait_for((Path(spec.output_dir) / "started").exists, what="the unit to start")

    infos = {info.attempt: info for info in runner.containers()}
    assert set(infos) == {spec.attempt for spec in specs}
    listed = {c.short_id: c for c in docker_client.containers.list(filters={"label": f"{LABEL_CLIENT}={CLIENT}"})}
    assert set(listed) == {info.container for info in infos.values()}, "ids as `docker ps` shows them"
    for spec in specs:
        info = infos[spec.attempt]
        assert len(info.container) == 12
        assert (info.unit, info.job, info.image, info.state) == (spec.unit, spec.job, spec.image, "running")
        assert (info.cpus, info.memory) == (spec.cpus, spec.memory)
        assert abs(info.started_at - time.time()) < 30
        assert info.memory_usage is not None and 20 * MIB < info.memory_usage < spec.memory

        attrs = listed[info.container].attrs
        labels = attrs["Config"]["Labels"]
        assert {k: labels.get(k) for k in (LABEL_CLIENT, LABEL_JOB, LABEL_UNIT, LABEL_ATTEMPT)} == {
            LABEL_CLIENT: CLIENT,
            LABEL_JOB: spec.job,
            LABEL_UNIT: spec.unit,
            LABEL_ATTEMPT: spec.attempt,
        }
        assert attrs["Config"]["User"] == images.NONROOT_USER
        assert "GREETING=hello" in attrs["Config"]["Env"]
        host = attrs["HostConfig"]
        assert host["NanoCpus"] == 500_000_000
        assert host["Memory"] == host["MemorySwap"] == spec.memory
        assert host["PidsLimit"] == 256
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
        assert host["AutoRemove"] is False
        assert set(host["Tmpfs"]) == {"/tmp"}
        assert host["LogConfig"]["Config"] == {"max-size": str(4 * MIB), "max-file": "1"}
        mounts = {m["Destination"]: m for m in attrs["Mounts"]}
        assert mounts["/input"]["RW"] is False and mounts["/output"]["RW"] is True

    time.sleep(0.3)  # cpu use is measured between two calls
    assert all(info.cpu_percent is not None and info.cpu_percent >= 0 for info in runner.containers())

    for spec in specs:
        (Path(spec.input_dir) / "go").touch()
    for spec, run in zip(specs, runs, strict=True):
        outcome = run.join()
        assert outcome.error is None and outcome.exit_code == 0, outcome
        assert outcome.runtime > 0
        log.info("%s: runtime %.2fs, peak memory %s", spec.attempt, outcome.runtime, outcome.peak_memory)
        if outcome.peak_memory is not None:  # read from the cgroup when it is visible here
            assert outcome.peak_memory >= 24 * MIB
        assert result_of(spec) == "hello some input\n"
    assert runner.containers() == []


def test_non_zero_exit_reports_code_and_stderr_tail(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    script = "for i in $(seq 1 500); do echo line $i of the error >&2; done; echo to stdout; exit 3"
    outcome = runner.run(make_spec(["sh", "-c", script]), threading.Event())
    assert outcome.error is ErrorKind.EXIT_NONZERO and outcome.exit_code == 3
    assert outcome.stderr_tail.endswith("line 500 of the error\n")
    assert len(outcome.stderr_tail.encode()) <= STDERR_TAIL
    assert "to stdout" not in outcome.stderr_tail


def test_a_command_that_does_not_exist_exits_127(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    outcome = runner.run(make_spec(["no-such-program", "--help"]), threading.Event())
    assert outcome.error is ErrorKind.EXIT_NONZERO and outcome.exit_code == 127
    assert "no-such-program" in outcome.stderr_tail


def test_out_of_memory(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(1024 * 1024))\n"
    outcome = runner.run(make_spec(["python3", "-c", grow], memory=32 * MIB), threading.Event())
    assert outcome.error is ErrorKind.OOM, outcome
    assert outcome.exit_code == 137 and "out of memory" in outcome.stderr_tail


def test_timeout_kills_and_removes(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    started = time.monotonic()
    outcome = runner.run(make_spec(["sleep", "30"], timeout=1.0), threading.Event())
    assert outcome.error is ErrorKind.TIMEOUT and "timeout" in outcome.stderr_tail
    assert 1.0 <= outcome.runtime < 5 and time.monotonic() - started < 10
    assert ours(docker_client) == []


def test_cancel_aborts(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    cancel = threading.Event()
    run = Background(runner, make_spec(["sleep", "30"]), cancel)
    wait_for(lambda: [i for i in runner.containers() if i.state == "running"], what="the container to run")
    cancelled = time.monotonic()
    cancel.set()
    outcome = run.join()
    assert outcome.error is ErrorKind.ABORTED
    assert time.monotonic() - cancelled < 5
    assert ours(docker_client) == []


def test_a_container_removed_from_outside_is_an_abort(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient
) -> None:
    run = Background(runner, make_spec(["sleep", "30"]))
    wait_for(lambda: [i for i in runner.containers() if i.state == "running"], what="the container to run")
    (container_id,) = ours(docker_client)
    docker_client.api.remove_container(container_id, force=True)  # a volunteer's `docker rm -f`
    outcome = run.join()
    assert outcome.error is ErrorKind.ABORTED and "removed" in outcome.stderr_tail, outcome
    assert runner.containers() == []


def test_cancelled_before_it_starts_creates_nothing(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    cancel = threading.Event()
    cancel.set()
    assert runner.run(make_spec(["true"]), cancel).error is ErrorKind.ABORTED


def test_missing_image(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    image = f"dockercomp/no-such-workload-{uuid.uuid4().hex[:8]}:latest"
    outcome = runner.run(make_spec(["true"], image=image), threading.Event())
    assert outcome.error is ErrorKind.IMAGE_MISSING
    assert image.split(":")[0] in outcome.stderr_tail


def test_docker_unavailable(make_spec: Callable[..., RunSpec], tmp_path: Path) -> None:
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41", timeout=5)
    runner = DockerRunner(dead)
    outcome = runner.run(make_spec(["true"]), threading.Event())
    assert outcome.error is ErrorKind.DOCKER_UNAVAILABLE
    assert "the Docker engine did not answer while creating the container" in outcome.stderr_tail
    assert runner.containers() == []
    assert runner.available_images() == []
    assert runner.remove_leftovers(CLIENT) == 0
    assert runner.engine_version() == ""


def test_the_engine_version_is_what_the_engine_says(runner: DockerRunner, docker_client: docker.DockerClient) -> None:
    version = runner.engine_version()  # the dashboard's Docker column
    assert version and version == docker_client.version()["Version"]


def test_refused_settings_are_a_client_error(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    outcome = runner.run(make_spec(["true"], memory=1 * MIB), threading.Event())  # below Docker's minimum
    assert outcome.error is ErrorKind.CLIENT and "memory" in outcome.stderr_tail


# --- the sandbox --------------------------------------------------------------------------

PROBE = r"""
import json, os, socket
found = {"uid": os.getuid(), "gid": os.getgid()}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
found["cap_eff"] = status["CapEff"].strip()
found["no_new_privs"] = status["NoNewPrivs"].strip()
found["interfaces"] = sorted(os.listdir("/sys/class/net"))
def writable(path):
    try:
        open(path, "w").close()
        return True
    except OSError:
        return False
found["rootfs_writable"] = writable("/probe")
found["input_writable"] = writable("/input/probe")
found["tmp_writable"] = writable("/tmp/probe")
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    found["network"] = "open"
except OSError as exc:
    found["network"] = str(exc)
try:
    socket.getaddrinfo("deb.debian.org", 80)
    found["dns"] = "resolves"
except OSError as exc:
    found["dns"] = str(exc)
for pids_max in ("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"):
    if os.path.exists(pids_max):
        found["pids_max"] = open(pids_max).read().strip()
json.dump(found, open("/output/result", "w"))
"""


def test_the_sandbox_holds(runner: DockerRunner, make_spec: Callable[..., RunSpec]) -> None:
    spec = make_spec(["python3", "-c", PROBE])
    outcome = runner.run(spec, threading.Event())
    assert outcome.error is None, outcome
    found = json.loads(result_of(spec))
    assert (found["uid"], found["gid"]) == (65534, 65534), "runs as nobody, not root"
    assert found["cap_eff"] == "0000000000000000" and found["no_new_privs"] == "1"
    assert found["interfaces"] == ["lo"], "no network but loopback"
    assert found["network"] != "open" and found["dns"] != "resolves"
    assert found["rootfs_writable"] is False and found["input_writable"] is False
    assert found["tmp_writable"] is True
    assert found["pids_max"] == "256"
    assert os.stat(Path(spec.output_dir) / "result").st_uid == 65534


# --- hostile strings ----------------------------------------------------------------------


def test_hostile_strings_never_reach_a_host_shell(
    runner: DockerRunner, make_spec: Callable[..., RunSpec], base_image: str
) -> None:
    """Every string field of a unit carries shell syntax that would create a marker file in
    the host's /tmp if anything interpolated it into a command line. Image names Docker
    refuses end as IMAGE_MISSING; the others run, and only inside the container."""
    token = uuid.uuid4().hex[:10]
    hostile = [
        f"$(touch /tmp/pwned-X-{token})",
        f"`touch /tmp/pwned-Y-{token}`",
        f"; touch /tmp/pwned-Z-{token}",
        f"\ntouch /tmp/pwned-N-{token}\n",
        f"' \"; touch /tmp/pwned-Q-{token} #",
        f"&& touch /tmp/pwned-A-{token} | touch /tmp/pwned-P-{token} > /tmp/pwned-R-{token}",
    ]
    everything = " ".join(hostile)

    def markers() -> list[str]:
        return sorted(p.name for p in Path("/tmp").glob(f"pwned-*-{token}"))

    for image in [*hostile, everything, f"{base_image}{hostile[0]}", f"{base_image}\n{hostile[2]}"]:
        outcome = runner.run(make_spec(["true"], image=image), threading.Event())
        assert outcome.error is ErrorKind.IMAGE_MISSING, (image, outcome)

    # A program that echoes its argv and environment: each arrives byte for byte, unexpanded.
    echo = (
        "import json, os, sys\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('HOSTILE')}\n"
        "json.dump({'argv': sys.argv[1:], 'env': env}, open('/output/result', 'w'))\n"
    )
    env = tuple((f"HOSTILE_{i}", value) for i, value in enumerate(hostile))
    spec = make_spec(
        ["python3", "-c", echo, *hostile],
        env=env,
        job=hostile[0],
        unit=hostile[1],
        attempt=hostile[2] + hostile[3],
        client=CLIENT,
    )
    outcome = runner.run(spec, threading.Event())
    assert outcome.error is None, outcome
    seen = json.loads(result_of(spec))
    assert seen["argv"] == hostile
    assert seen["env"] == dict(env)

    # A shell given as the unit's command runs, but in the container (whose /tmp is a tmpfs).
    script = f"{hostile[0]}; {hostile[1]}; touch /tmp/pwned-IN-{token}; ls /tmp > /output/result"
    spec = make_spec(["sh", "-c", script], env=env, job=everything)
    outcome = runner.run(spec, threading.Event())
    assert outcome.error is None, outcome
    inside = result_of(spec).split()
    assert {f"pwned-X-{token}", f"pwned-Y-{token}", f"pwned-IN-{token}"} <= set(inside), inside

    assert markers() == [], "a hostile string ran on the host"


# --- leftovers ----------------------------------------------------------------------------


def test_a_daemon_restarted_after_a_crash_removes_what_it_left(
    make_spec: Callable[..., RunSpec], docker_client: docker.DockerClient, runner: DockerRunner
) -> None:
    """A process running a unit is killed with SIGKILL (no finally runs); its container keeps
    running. The next runner for the same client removes it, and only it."""
    crashed_client = f"{CLIENT}-crashed"
    spec = make_spec(["sleep", "60"], client=crashed_client)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, sys, threading\n"
            "from dockercomp.client.docker_runner import DockerRunner\n"
            "from dockercomp.client.runner import RunSpec\n"
            "fields = json.loads(sys.argv[1])\n"
            "fields['command'] = tuple(fields['command'])\n"
            "DockerRunner().run(RunSpec(**fields), threading.Event())\n",
            json.dumps(dataclasses.asdict(spec)),
        ],
    )
    other = docker_client.containers.run(
        spec.image, ["sleep", "60"], detach=True, labels={LABEL_CLIENT: CLIENT}, network_mode="none"
    )
    try:
        wait_for(
            lambda: [
                c for c in ours(docker_client, crashed_client) if docker_client.containers.get(c).status == "running"
            ],
            what="the child's container running",
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        left = ours(docker_client, crashed_client)
        assert len(left) == 1 and docker_client.containers.get(left[0]).status == "running"

        assert runner.remove_leftovers(crashed_client) == 1
        assert ours(docker_client, crashed_client) == []
        assert ours(docker_client) == [other.id], "another client's container is left alone"
    finally:
        if child.poll() is None:
            child.kill()
        other.remove(force=True)
        for container_id in ours(docker_client, crashed_client):
            docker_client.api.remove_container(container_id, force=True)


def test_remove_leftovers_spares_live_runs_and_selects_by_label() -> None:
    api = mock.Mock()
    api.containers.return_value = [{"Id": "a" * 64, "Labels": {}}, {"Id": "b" * 64, "Labels": {}}]
    api.networks.return_value = []  # no leftover network (tests/client/test_group.py has those)
    client = mock.Mock(api=api)
    runner = DockerRunner(client)
    runner._live["b" * 64] = mock.Mock()  # a run of this runner, in progress
    assert runner.remove_leftovers() == 1
    api.containers.assert_called_once_with(all=True, filters={"label": LABEL_CLIENT})
    api.remove_container.assert_called_once_with("a" * 64, v=True, force=True)
    api.containers.reset_mock()
    runner.remove_leftovers("c-1")
    api.containers.assert_called_once_with(all=True, filters={"label": f"{LABEL_CLIENT}=c-1"})


@pytest.mark.parametrize(
    ("oom_killed", "code", "peak", "expected"),
    [
        (True, 137, None, ErrorKind.OOM),
        (False, 137, 31 * MIB, ErrorKind.OOM),  # SIGKILL at the limit, not flagged by the engine
        (False, 137, 4 * MIB, ErrorKind.EXIT_NONZERO),  # killed by something else
        (False, 137, None, ErrorKind.EXIT_NONZERO),
        (False, 1, 32 * MIB, ErrorKind.EXIT_NONZERO),
    ],
)
def test_telling_an_out_of_memory_from_a_failure(
    oom_killed: bool, code: int, peak: int | None, expected: ErrorKind, tmp_path: Path
) -> None:
    api = mock.Mock()
    api.inspect_container.return_value = {"State": {"OOMKilled": oom_killed, "ExitCode": code}}
    api.logs.return_value = b"Killed\n"
    runner = DockerRunner(mock.Mock(api=api))
    spec = RunSpec(CLIENT, "a", "j", "u", "img", (), (), 1.0, 32 * MIB, 10.0, str(tmp_path), str(tmp_path))
    outcome = runner._failed(spec, "c" * 64, code, 1.0, peak, "test")
    assert (outcome.error, outcome.exit_code, outcome.peak_memory) == (expected, code, peak)
    assert outcome.stderr_tail.startswith("Killed")


def test_available_images_lists_tags(runner: DockerRunner, base_image: str) -> None:
    found = runner.available_images()
    assert base_image in found and "<none>:<none>" not in found


def test_a_units_gpus_are_a_device_request_of_its_container(tmp_path: Path) -> None:
    """No GPU here: what the engine is asked is checked (a machine with one runs it so)."""
    api = mock.Mock()
    api.create_container.return_value = {"Id": "d" * 64}
    runner = DockerRunner(mock.Mock(api=api))
    for gpus, expected in ((2, [{"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                 "Options": {}}]), (0, None)):  # fmt: skip
        spec = RunSpec(CLIENT, "a", "j", "u", "img", (), (), 1.0, 32 * MIB, 10.0, str(tmp_path), str(tmp_path),
                       gpus=gpus)  # fmt: skip
        runner._create_container(spec)
        assert api.create_host_config.call_args.kwargs["device_requests"] == expected
