"""A second, empty Docker engine beside the first: what a volunteer that has no image yet looks
like. Image delivery must be tested against an engine that really lacks the layers, and the
main engine cannot be emptied (other tests and the developer's images live there).

The engine is a plain ``dockerd`` with its own data root, exec root, pidfile and socket, and
no networking of its own (no bridge, no iptables), in a network namespace of its own (a
``dockerd --bridge=none`` deletes the host's ``docker0`` when it starts), so it touches nothing
of the host's engine.
It needs root and the dockerd binary (EngineUnavailable says which is missing). The demo
runs one volunteer on such an engine; the tests run image delivery against one.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker

START_TIMEOUT = 60.0


class EngineUnavailable(Exception):
    """No second engine can run here: no dockerd, not root, or it did not come up."""


STOP_TIMEOUT = 20.0


@contextlib.contextmanager
def empty_engine(tmp: Path) -> Iterator[str]:
    """Run an empty dockerd; yield its ``unix://`` URL once it answers a ping, stop it on exit.

    Its state lives in a short directory under /tmp (a unix socket path may not exceed 108
    bytes, and pytest's tmp paths are long); its log goes to ``tmp/dockerd.log`` so a failed
    test leaves it behind to read."""
    binary = shutil.which("dockerd")
    if binary is None:
        raise EngineUnavailable("a second Docker engine needs the dockerd binary (install docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable("a second Docker engine needs root")
    tmp.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="dce-", dir="/tmp"))
    url = f"unix://{state}/sock"
    log_path = tmp / "dockerd.log"
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EngineUnavailable("a second Docker engine needs unshare (util-linux) for a network namespace of its own")
    argv = [
        unshare,
        "--net",
        "--",
        binary,
        f"--data-root={state}/root",
        f"--exec-root={state}/exec",
        f"--pidfile={state}/pid",
        f"--host={url}",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(proc, url, log_path)
        yield url
    finally:
        _stop(proc)
        _unmount_below(state)
        shutil.rmtree(state, ignore_errors=True)


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with code {proc.returncode}:\n{_tail(log_path)}")
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
            try:
                client.ping()
                return
            finally:
                client.close()
        except Exception as exc:  # not listening yet: the socket is missing or refuses
            last = exc
        time.sleep(0.2)
    raise EngineUnavailable(f"dockerd did not answer on {url} within {START_TIMEOUT:.0f}s ({last}):\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets dockerd stop its containerd and unmount its layers; kill only if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


def _unmount_below(path: Path) -> None:
    """Unmount what a dead dockerd left mounted under its state (overlay layers, its own
    bind mounts), deepest first, so removing the directory never reaches elsewhere."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [fields[1].replace("\\040", " ") for fields in (m.split() for m in mounts) if len(fields) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
