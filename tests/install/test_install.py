"""installer.sh and cleanup: shellcheck, the plan of a dry run, a master that cannot be
reached or that answers hostile strings, and the whole cycle: install against a running
master, the daemon registers and finishes units, cleanup leaves nothing of ours behind."""

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from dockercomp.protocol import signing
from tests.engines import empty_engine
from tests.fixtures.docker import workload_image
from tests.needs import skip_or_fail
from tests.pki import make_pki
from tests.publish import publish, signing_key

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "installer.sh"
CLEANUP = ROOT / "cleanup"
LAB = ("--allow-unsigned",)  # for runs that never get to a daemon: the plan, refusals
HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "'; touch {marker}; '",
    '"; touch {marker}; "',
    "x\n$(touch {marker})\n",
]


def env_for(home: Path) -> dict[str, str]:
    """A throwaway HOME; tool shims under the real HOME kept off PATH (they would write there)."""
    real_home = os.path.expanduser("~")
    path = [p for p in os.environ.get("PATH", "").split(":") if p and not p.startswith(real_home)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_", "XDG_"))}
    env.update(HOME=str(home), PATH=":".join(path), DOCKERCOMP_REGISTER_WAIT="60")
    return env


def run(
    script: Path, *args: str, home: Path, timeout: float = 300, docker_host: str = ""
) -> subprocess.CompletedProcess[str]:
    env = env_for(home) | ({"DOCKER_HOST": docker_host} if docker_host else {})
    return subprocess.run(
        ["sh", str(script), *args],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        skip_or_fail("shellcheck is not installed (apt-get install shellcheck; ./dev test does it as root)")
    done = subprocess.run(["shellcheck", "-s", "sh", str(INSTALLER), str(CLEANUP)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_volunteer_names_the_key_it_trusts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    base = ["--server", "http://127.0.0.1:1", "--prefix", str(tmp_path / "prefix"), "--dry-run"]
    refused = run(INSTALLER, *base, home=home)
    assert refused.returncode != 0 and "give --trust FINGERPRINT" in refused.stderr
    short = run(INSTALLER, *base, "--trust", "abc", home=home)
    assert short.returncode != 0 and "64 lowercase hex digits" in short.stderr
    planned = run(INSTALLER, *base, "--trust", "ab" * 32, home=home)
    assert planned.returncode == 0, planned.stderr
    assert f"would: fetch the project's signing key {'ab' * 32} from the master, check its fingerprint" in (
        planned.stderr
    )


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    prefix = tmp_path / "prefix"
    done = run(INSTALLER, "--server", "http://127.0.0.1:1", "--prefix", str(prefix), "--dry-run", *LAB, home=home)
    assert done.returncode == 0, done.stderr
    assert "dry run: nothing is changed" in done.stderr
    assert f"would: create directory {prefix} and the manifest" in done.stderr
    assert "would: start the daemon in the background" in done.stderr
    assert not prefix.exists()
    assert list(home.iterdir()) == []


def test_unreachable_master_installs_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    prefix = tmp_path / "prefix"
    done = run(INSTALLER, "--server", "http://127.0.0.1:1", "--prefix", str(prefix), "--yes", *LAB, home=home)
    assert done.returncode != 0
    assert "cannot reach the master at http://127.0.0.1:1" in done.stderr
    assert not prefix.exists()
    assert list(home.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "marker"
    for args in (
        ["--server", f"http://x/$(touch {marker})"],
        ["--server", "http://127.0.0.1:1", "--enroll", f"`touch {marker}`"],
        ["--server", "http://127.0.0.1:1", "--name", f"a'; touch {marker}; '"],
        ["--server", "http://127.0.0.1:1", "--slots", "$(id)"],
        ["--server", "http://127.0.0.1:1", "--trust", f"$(touch {marker})"],
    ):
        done = run(INSTALLER, *args, "--prefix", str(tmp_path / "prefix"), *LAB, home=home)
        assert done.returncode != 0 and "error:" in done.stderr, args
    assert not marker.exists()
    assert not (tmp_path / "prefix").exists()


@pytest.fixture
def hostile_master(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server on 127.0.0.1 that answers every request with hostile strings."""
    marker = tmp_path / "executed"
    values = [v.format(marker=marker) for v in HOSTILE]

    class Handler(http.server.BaseHTTPRequestHandler):
        count = 0

        def do_GET(self) -> None:
            Handler.count += 1
            value = values[Handler.count % len(values)]
            body = "".join(f"{k}={value}\n" for k in ("version", "wheel", "sha256", "client", "token"))
            if self.path.startswith("/api/v1/install") and Handler.count % 2:
                body = f"version=1{value}\nwheel=dockercomp-1{value}-py3-none-any.whl\nsha256={value}\n"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", marker
    server.shutdown()
    server.server_close()


def test_hostile_master_executes_nothing(tmp_path: Path, hostile_master: tuple[str, Path]) -> None:
    url, marker = hostile_master
    home = tmp_path / "home"
    home.mkdir()
    prefix = tmp_path / "prefix"
    for _ in range(len(HOSTILE) * 2):
        done = run(INSTALLER, "--server", url, "--prefix", str(prefix), "--yes", "--slots", "1", *LAB, home=home)
        assert done.returncode != 0
        assert "nothing was installed" in done.stderr, done.stderr
        assert not marker.exists(), done.stderr
        assert not prefix.exists()
    assert list(home.iterdir()) == []


def test_master_serves_the_scripts(shared_master: Any) -> None:
    script = requests.get(f"{shared_master.url}/install.sh", timeout=10)
    assert script.status_code == 200
    assert f"DEFAULT_SERVER='{shared_master.url}'" in script.text
    hostile = requests.get(f"{shared_master.url}/install.sh", headers={"Host": "x$(id)"}, timeout=10)
    assert "DEFAULT_SERVER=''" in hostile.text and "$(id)" not in hostile.text.split("DEFAULT_SERVER", 2)[1][:20]
    cleanup = requests.get(f"{shared_master.url}/cleanup", timeout=10)
    assert cleanup.status_code == 200 and cleanup.text == CLEANUP.read_text()


# -- the whole cycle ---------------------------------------------------------------------------


def listing(*roots: Path) -> set[str]:
    found = set()
    for root in roots:
        if not root.exists():
            continue
        for path, dirs, files in os.walk(root):
            found.add(path)
            found.update(os.path.join(path, name) for name in dirs + files)
    return found


def docker_objects(client: docker.DockerClient) -> set[str]:
    api = client.api
    containers = {f"container {c['Id']}" for c in api.containers(all=True, filters={"label": "dockercomp.client"})}
    volumes = {f"volume {v['Name']}" for v in (api.volumes(filters={"label": "dockercomp.client"})["Volumes"] or [])}
    images_ = {f"image {i['Id']}" for i in api.images(filters={"label": "dockercomp.image"})}
    return containers | volumes | images_


@pytest.fixture(scope="module")
def workload_images(docker_client: docker.DockerClient) -> list[str]:
    """wordfreq and kmers: two workloads built FROM the same base image."""
    return [workload_image(docker_client, name) for name in ("wordfreq", "kmers")]


def cli(master: Any, ca: Path, *args: str) -> dict[str, Any]:
    """``dockercomp ARGS --json`` as a scientist would, over TLS with the operator's token."""
    done = subprocess.run(
        [sys.executable, "-m", "dockercomp", *args, "--server", master.url, "--ca", str(ca), "--token", master.token,
         "--json"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_install_from_a_tls_master_onto_an_empty_engine_work_and_cleanup_leaves_nothing(
    tmp_path: Path, master_factory: Any, docker_client: docker.DockerClient, workload_images: list[str]
) -> None:
    """A volunteer with a Docker engine of its own that holds nothing yet installs from a master
    serving HTTPS (its CA made here), enrolled by token and pinning the project's key by its
    fingerprint. It gets each workload's image from the master alone: the second workload, on
    the same base, costs only its own layers. Then cleanup leaves nothing behind."""
    pki = make_pki(tmp_path / "pki")
    master = master_factory("--certfile", str(pki.cert), "--keyfile", str(pki.key), open_enrollment=False,
                            verify=str(pki.ca))  # fmt: skip
    assert master.url.startswith("https://127.0.0.1:")
    wordfreq_id, kmers_id = (publish(master, tag) for tag in workload_images)
    fingerprint = signing.fingerprint(signing.load_public(signing_key()[1])[0])
    enroll = master.key("volunteer", "lab-volunteers")
    with empty_engine(tmp_path / "engine") as engine_url:
        engine = docker.DockerClient(base_url=engine_url)
        home = tmp_path / "home"
        home.mkdir()
        prefix = tmp_path / "opt" / "dockercomp"
        areas = [home, prefix.parent, Path("/etc")]
        before = listing(*areas), docker_objects(docker_client)
        args = ["--server", master.url, "--ca", str(pki.ca), "--enroll", enroll, "--trust", fingerprint]
        args += ["--prefix", str(prefix), "--slots", "2", "--memory", "512MiB", "--yes"]
        done = run(INSTALLER, *args, home=home, docker_host=engine_url)
        assert done.returncode == 0, done.stderr
        assert "registered as client" in done.stderr
        assert (prefix / "trusted-keys.pem").read_bytes() == Path(signing_key()[1]).read_bytes()
        config = (prefix / "client.toml").read_text()
        assert f'ca = "{prefix}/ca.pem"' in config and f'trust = "{prefix}/trusted-keys.pem"' in config
        manifest = (prefix / "manifest").read_text()
        assert f"pidfile {prefix}/run/supervisor.pid" in manifest

        again = run(INSTALLER, *args, home=home, docker_host=engine_url)  # a second run upgrades in place
        assert again.returncode == 0, again.stderr
        assert "upgrading in place" in again.stderr
        assert (prefix / "manifest").read_text().splitlines()[: len(manifest.splitlines())] == manifest.splitlines()

        identity = json.loads((prefix / "client" / "identity.json").read_text())
        clients = requests.get(f"{master.api}/clients", headers=master.headers, verify=str(pki.ca), timeout=10)
        (client,) = [c for c in clients.json()["clients"] if c["id"] == identity["client"]]
        assert client["account"] == "lab-volunteers"
        assert engine.api.images(all=True) == []  # nothing yet

        text = tmp_path / "input.txt"
        text.write_text("the quick brown fox jumps over the lazy dog\n" * 2000)
        first = cli(master, pki.ca, "submit", str(ROOT / "workloads/wordfreq/job.json"), str(text), "--wait")
        assert first["state"] == "done", (prefix / "log/daemon.log").read_text()
        got_first = received(prefix)
        wordfreq = requests.get(f"{master.api}/images/{wordfreq_id}", headers=master.headers, verify=str(pki.ca))
        record = wordfreq.json()
        assert got_first == sum(layer["size"] for layer in record["layers"]) + record["config_size"]

        fasta = tmp_path / "reads.fa"
        fasta.write_text(">read1\nACGTACGTAAGGCT\n>read2\nTTGACCAGTACGAA\n")
        second = cli(master, pki.ca, "submit", str(ROOT / "workloads/kmers/job.json"), str(fasta), "--wait")
        assert second["state"] == "done", (prefix / "log/daemon.log").read_text()
        kmers = requests.get(f"{master.api}/images/{kmers_id}", headers=master.headers, verify=str(pki.ca)).json()
        assert kmers["layers"][0] == record["layers"][0]  # the same base
        own = sum(layer["size"] for layer in kmers["layers"][1:]) + kmers["config_size"]
        assert received(prefix) - got_first == own < kmers["layers"][0]["size"] // 100
        held = engine.api.images(all=True)
        assert {i["Id"] for i in held} == {wordfreq_id, kmers_id}
        assert [n for i in held for n in (i.get("RepoDigests") or []) if "<none>" not in n] == []  # none pulled

        supervisor = int((prefix / "run" / "supervisor.pid").read_text())
        done = run(CLEANUP, "--prefix", str(prefix), home=home, docker_host=engine_url)
        assert done.returncode == 0, done.stderr
        assert f"stopping the supervisor (pid {supervisor}" in done.stderr
        assert not Path(f"/proc/{supervisor}").exists()
        assert "removed directory" in done.stderr

        after = listing(*areas), docker_objects(docker_client)
        assert after[0] - before[0] == set(), "files of ours left behind"
        assert after[1] - before[1] == set(), "Docker objects of ours left behind"
        assert docker_objects(engine) == set(), "Docker objects of ours left on the volunteer's engine"
        engine.close()

        twice = run(CLEANUP, "--prefix", str(prefix), home=home, docker_host=engine_url)  # safe to run twice
        assert twice.returncode == 0 and "nothing to remove" in twice.stderr


def received(prefix: Path) -> int:
    """The image bytes the installed daemon has downloaded from the master (its status file)."""
    return int(json.loads((prefix / "client" / "status.json").read_text()).get("image_bytes") or 0)


def test_client_uninstall_runs_cleanup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    argv = [sys.executable, "-m", "dockercomp", "client", "uninstall", "--prefix", str(tmp_path / "none")]
    done = subprocess.run(argv, env=env_for(home), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"no install found at {tmp_path / 'none'}" in done.stderr
