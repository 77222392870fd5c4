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
from needs import skip_or_fail

from dockercomp.client import images

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "installer.sh"
CLEANUP = ROOT / "cleanup"
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


def run(script: Path, *args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script), *args],
        env=env_for(home),
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


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    prefix = tmp_path / "prefix"
    done = run(INSTALLER, "--server", "http://127.0.0.1:1", "--prefix", str(prefix), "--dry-run", home=home)
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
    done = run(INSTALLER, "--server", "http://127.0.0.1:1", "--prefix", str(prefix), "--yes", home=home)
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
    ):
        done = run(INSTALLER, *args, "--prefix", str(tmp_path / "prefix"), home=home)
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
        done = run(INSTALLER, "--server", url, "--prefix", str(prefix), "--yes", "--slots", "1", home=home)
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
def wordfreq_image(docker_client: docker.DockerClient) -> str:
    try:
        return images.build_workload(docker_client, "wordfreq")
    except images.ImageError as exc:
        skip_or_fail(f"cannot build the wordfreq image: {exc}")


@pytest.mark.slow
def test_install_work_cleanup_leaves_nothing(
    tmp_path: Path, master: Any, docker_client: docker.DockerClient, wordfreq_image: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    prefix = tmp_path / "opt" / "dockercomp"
    areas = [home, prefix.parent, Path("/etc")]
    before = listing(*areas), docker_objects(docker_client)

    args = ["--server", master.url, "--prefix", str(prefix), "--slots", "2", "--memory", "512MiB", "--yes"]
    done = run(INSTALLER, *args, home=home)
    assert done.returncode == 0, done.stderr
    assert "registered as client" in done.stderr
    manifest = (prefix / "manifest").read_text()
    assert f"pidfile {prefix}/run/supervisor.pid" in manifest

    again = run(INSTALLER, *args, home=home)  # a second run upgrades in place
    assert again.returncode == 0, again.stderr
    assert "upgrading in place" in again.stderr
    assert (prefix / "manifest").read_text().splitlines()[: len(manifest.splitlines())] == manifest.splitlines()

    identity = json.loads((prefix / "client" / "identity.json").read_text())
    clients = requests.get(f"{master.api}/clients", timeout=10).json()["clients"]
    assert identity["client"] in {c["id"] for c in clients}

    text = tmp_path / "input.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 2000)
    submit = subprocess.run(
        [sys.executable, "-m", "dockercomp", "submit", str(ROOT / "workloads/wordfreq/job.json"), str(text),
         "--server", master.url, "--wait", "--json"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr + (prefix / "log/daemon.log").read_text()
    assert json.loads(submit.stdout.splitlines()[-1])["state"] == "done"

    supervisor = int((prefix / "run" / "supervisor.pid").read_text())
    done = run(CLEANUP, "--prefix", str(prefix), home=home)
    assert done.returncode == 0, done.stderr
    assert f"stopping the supervisor (pid {supervisor}" in done.stderr
    assert not Path(f"/proc/{supervisor}").exists()
    assert "removed directory" in done.stderr

    after = listing(*areas), docker_objects(docker_client)
    assert after[0] - before[0] == set(), "files of ours left behind"
    assert after[1] - before[1] == set(), "Docker objects of ours left behind"

    twice = run(CLEANUP, "--prefix", str(prefix), home=home)  # safe to run twice
    assert twice.returncode == 0 and "nothing to remove" in twice.stderr


def test_client_uninstall_runs_cleanup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    argv = [sys.executable, "-m", "dockercomp", "client", "uninstall", "--prefix", str(tmp_path / "none")]
    done = subprocess.run(argv, env=env_for(home), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"no install found at {tmp_path / 'none'}" in done.stderr
