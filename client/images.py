"""Workload images, built offline.

Volunteers' machines (and the master's test machines) cannot count on an image registry, so
every image a unit runs in can be built from Debian packages alone:

- the base image ``dockercomp/base:bookworm`` is a debootstrap minbase root filesystem with
  Python, imported with ``docker import``. Debootstrap takes about a minute, so its tarball
  is cached and the image is built once per machine; a re-import from the cached tarball
  takes seconds.
- each workload is ``workloads/<name>/Dockerfile`` built FROM the base as
  ``dockercomp/<name>:latest``.

When ``DOCKERCOMP_BASE_PULL`` names an image in a registry that answers within a few
seconds, the base is pulled from there instead; nothing is pulled otherwise.
"""

import contextlib
import fcntl
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from dockercomp import resources
from dockercomp.protocol import service

from .errors import ClientError

log = logging.getLogger(__name__)

BASE_REPOSITORY = "dockercomp/base"
SUITE = "bookworm"
BASE_IMAGE = f"{BASE_REPOSITORY}:{SUITE}"
WORKLOAD_REPOSITORY = "dockercomp"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Packages added to debootstrap's minbase: the Python interpreter and its whole standard
# library (python3-minimal alone lacks json, gzip, statistics...). Changing this list (or
# RECIPE) changes the name of the cached tarball, so a stale root filesystem is never re-imported.
BASE_PACKAGES = ("python3-minimal", "libpython3-stdlib")
RECIPE = 1
# The user workloads run as: Debian's "nobody", present in every base-passwd.
NONROOT_USER = "65534:65534"
REGISTRY_PROBE_TIMEOUT = 3.0
DEBOOTSTRAP_TIMEOUT = 1800.0

# Settings the imported image carries. PYTHONHASHSEED=0 makes set iteration order the same on
# every volunteer, so replicas of a unit agree byte for byte; a read-only root filesystem
# cannot take bytecode files anyway.
_BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV PYTHONUNBUFFERED=1",
    "ENV PYTHONHASHSEED=0",
    "WORKDIR /",
    'CMD ["python3"]',
    f"LABEL dockercomp.image=base dockercomp.suite={SUITE} dockercomp.recipe={RECIPE}",
)
_WORKLOAD_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")


class ImageError(ClientError):
    """An image could not be found or built; the message says what to do about it."""


def workloads_dir() -> Path:
    """Where workload directories live: ``$DOCKERCOMP_WORKLOADS``, else the ones shipped with
    dockercomp (package data of the installed wheel, or the checkout's ``workloads/``)."""
    configured = os.environ.get("DOCKERCOMP_WORKLOADS")
    if configured:
        return Path(configured)
    return resources.workloads_dir()


def cache_dir() -> Path:
    """Where the base root filesystem tarball is kept between builds: ``$DOCKERCOMP_CACHE_DIR``,
    else /var/cache/dockercomp for root (debootstrap needs root anyway), else the user's cache."""
    configured = os.environ.get("DOCKERCOMP_CACHE_DIR")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/dockercomp")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dockercomp"


def workload_tag(name: str) -> str:
    """The image tag a workload is built as."""
    return f"{WORKLOAD_REPOSITORY}/{name}:latest"


def list_workloads(root: Path | None = None) -> list[str]:
    """Names of the workloads that can be built (directories holding a Dockerfile), sorted."""
    root = root or workloads_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / "Dockerfile").is_file() and _WORKLOAD_NAME_RE.fullmatch(p.name)
    )


def connect(timeout: float = 120.0) -> docker.DockerClient:
    """A Docker client talking to the local engine, the API version negotiated with it (the
    engine may be older than the SDK)."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if "Permission denied" in str(exc):
            raise ImageError(
                f"the Docker engine at {where} refuses this user: run as root or add the user to the docker group"
            ) from exc
        raise ImageError(
            f"no Docker engine answers at {where}: start one with scripts/ensure-docker or install Docker Engine "
            f"({_short(exc)})"
        ) from exc
    return client


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        raise ImageError(f"cannot inspect image {ref}: {_short(exc)}") from exc
    return True


def ensure_image(client: docker.DockerClient, ref: str) -> None:
    """Make ``ref`` available locally: present already, a workload of ours built offline, or
    pulled. This is what a client daemon calls before it runs an attempt."""
    if image_exists(client, ref):
        return
    name = _own_workload(ref)
    if name is not None:
        build_workload(client, name)
        return
    log.info("pulling %s", ref)
    try:
        client.images.pull(ref)
    except docker.errors.DockerException as exc:
        raise ImageError(f"image {ref} is not here and cannot be pulled: {_short(exc)}") from exc


def ensure_base_image(client: docker.DockerClient, *, pull_from: str | None = None, mirror: str | None = None) -> str:
    """Make sure the base image exists, building it offline when it does not; return its tag.

    Safe to call from several processes at once: one builds, the others wait for it and then
    find the image.
    """
    if image_exists(client, BASE_IMAGE):
        log.debug("base image %s is present", BASE_IMAGE)
        return BASE_IMAGE
    cache = cache_dir()
    _mkdir(cache)
    with _locked(cache / "base.lock"):
        if image_exists(client, BASE_IMAGE):  # another process built it while we waited
            return BASE_IMAGE
        pull_from = pull_from if pull_from is not None else os.environ.get("DOCKERCOMP_BASE_PULL")
        if pull_from and _pull_base(client, pull_from):
            return BASE_IMAGE
        tarball = cache / f"{SUITE}-minbase-{'-'.join(BASE_PACKAGES)}-r{RECIPE}-{platform.machine()}.tar"
        if tarball.is_file():
            log.info("importing %s from the cached root filesystem %s", BASE_IMAGE, tarball)
        else:
            _debootstrap_tarball(tarball, mirror or os.environ.get("DOCKERCOMP_DEBIAN_MIRROR") or DEFAULT_MIRROR)
        _import(client, tarball)
    return BASE_IMAGE


def build_workload(client: docker.DockerClient, name: str, *, root: Path | None = None) -> str:
    """Build ``workloads/<name>/Dockerfile`` as ``dockercomp/<name>:latest``, building the base
    first when it is missing; return the tag. Nothing is pulled: the base is local."""
    root = root or workloads_dir()
    if not _WORKLOAD_NAME_RE.fullmatch(name) or not (root / name / "Dockerfile").is_file():
        known = ", ".join(list_workloads(root)) or "none"
        raise ImageError(f"no workload named {name!r:.70} in {root} (known: {known})")
    ensure_base_image(client)
    tag = workload_tag(name)
    log.info("building %s from %s", tag, root / name)
    started = time.monotonic()
    try:
        image, _ = client.images.build(
            fileobj=build_context(root / name),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            labels={"dockercomp.image": "workload", "dockercomp.workload": name},
        )
    except docker.errors.BuildError as exc:
        lines = [str(c.get("stream") or c.get("error") or "").rstrip() for c in exc.build_log if isinstance(c, dict)]
        tail = "\n".join(line for line in lines if line)[-2000:]
        raise ImageError(f"building {tag} failed: {exc.msg}\n{tail}") from exc
    except docker.errors.DockerException as exc:
        raise ImageError(f"building {tag} failed: {_short(exc)}") from exc
    log.info("built %s (%s) in %.1fs", tag, image.short_id, time.monotonic() - started)
    return tag


RUNNER_LIBRARY = "dockercomp_runner.py"


def build_context(folder: Path) -> io.BytesIO:
    """A workload's build context: its folder, plus service mode's runner library as
    ``dockercomp_runner.py`` (protocol/service.py, the module the daemon speaks with), so a
    Dockerfile can ``COPY dockercomp_runner.py /app/``. A file of that name in the folder wins."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        if not (folder / RUNNER_LIBRARY).exists():
            tar.add(service.__file__, arcname=RUNNER_LIBRARY)
    buffer.seek(0)
    return buffer


def missing_image(ref: str) -> str | None:
    """Why no volunteer could run ``ref``, or None when it can: an image of our workload
    namespace must name a workload in the workloads folder (volunteers build those); any other
    must be present on the local engine, when one answers (with no registry it cannot be pulled).
    Checked at submit, so a job no client can run is refused before anything is created."""
    if ref.startswith(f"{WORKLOAD_REPOSITORY}/") and ref != BASE_IMAGE:
        if _own_workload(ref) is None:
            known = ", ".join(workload_tag(name) for name in list_workloads()) or "none"
            return f"no workload builds the image {ref} (known: {known}); see `dockercomp workloads list`"
        return None
    try:
        client = connect(timeout=10)
    except ImageError:
        return None  # no engine here to ask; the volunteers will report image_missing if need be
    try:
        if not image_exists(client, ref):
            return f"the image {ref} is not on this machine and no registry can provide it; build or load it first"
    except ImageError:
        return None
    finally:
        client.close()
    return None


def _own_workload(ref: str) -> str | None:
    """The workload name when ``ref`` is one of ours that exists in the workloads folder."""
    match = re.fullmatch(rf"{WORKLOAD_REPOSITORY}/([a-z0-9][a-z0-9_.\-]*)(?::latest)?", ref)
    if match and match.group(1) in list_workloads():
        return match.group(1)
    return None


def _pull_base(client: docker.DockerClient, ref: str) -> bool:
    """Pull ``ref`` and tag it as the base when its registry answers quickly; False otherwise,
    so the caller builds offline without waiting on a registry that is not there."""
    host, _, rest = ref.partition("/")
    if not rest or ("." not in host and ":" not in host and host != "localhost"):
        host = "registry-1.docker.io"
    hostname, _, port = host.partition(":")
    try:
        socket.create_connection((hostname, int(port or 443)), timeout=REGISTRY_PROBE_TIMEOUT).close()
    except (OSError, ValueError):
        log.info("registry %s does not answer; building %s offline", host, BASE_IMAGE)
        return False
    try:
        log.info("pulling %s as %s", ref, BASE_IMAGE)
        client.images.pull(ref).tag(BASE_REPOSITORY, SUITE)
    except docker.errors.DockerException as exc:
        log.warning("pulling %s failed (%s); building %s offline", ref, _short(exc), BASE_IMAGE)
        return False
    return True


def _debootstrap_tarball(tarball: Path, mirror: str) -> None:
    """Build the root filesystem with debootstrap and keep it as a tarball in the cache."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise ImageError(
            "building the base image needs debootstrap: apt-get install -y debootstrap (or run scripts/ensure-docker)"
        )
    if os.geteuid() != 0:
        raise ImageError(
            f"building the base image runs debootstrap, which needs root: run the build once as root, "
            f"or set DOCKERCOMP_CACHE_DIR to a directory holding a tarball made by root ({tarball.name})"
        )
    log.info("building %s with debootstrap from %s (about a minute, once per machine)", BASE_IMAGE, mirror)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="dockercomp-rootfs-", dir=tarball.parent))
    rootfs = workdir / "rootfs"
    try:
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            "debootstrap",
            DEBOOTSTRAP_TIMEOUT,
        )
        _unmount_below(rootfs)
        _trim(rootfs)
        partial = workdir / "rootfs.tar"
        _run(["tar", "--numeric-owner", "--sort=name", "-C", str(rootfs), "-cf", str(partial), "."], "tar", 600)
        partial.replace(tarball)
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("root filesystem built in %.0fs: %s (%d MiB)", time.monotonic() - started, tarball, _mib(tarball))


def _trim(rootfs: Path) -> None:
    """Drop what a container never reads (package caches, manuals, translations) and add the
    unit mount points. Licences (/usr/share/doc/*/copyright) stay."""
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()
    for sub in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        shutil.rmtree(rootfs / sub, ignore_errors=True)
    for doc in (rootfs / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright" and not doc.is_symlink():
            shutil.rmtree(doc) if doc.is_dir() else doc.unlink()
    for mount_point in ("input", "output", "app"):
        (rootfs / mount_point).mkdir(mode=0o755, exist_ok=True)


def _import(client: docker.DockerClient, tarball: Path) -> None:
    started = time.monotonic()
    try:
        output = client.api.import_image(
            src=str(tarball), repository=BASE_REPOSITORY, tag=SUITE, changes=list(_BASE_CHANGES)
        )
    except docker.errors.DockerException as exc:
        raise ImageError(f"importing {tarball} as {BASE_IMAGE} failed: {_short(exc)}") from exc
    for line in str(output).splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("error"):
                raise ImageError(f"importing {tarball} as {BASE_IMAGE} failed: {event['error']}")
    if not image_exists(client, BASE_IMAGE):
        raise ImageError(f"importing {tarball} did not create {BASE_IMAGE}: {str(output)[-300:]}")
    log.info("imported %s in %.1fs", BASE_IMAGE, time.monotonic() - started)


def _run(argv: list[str], what: str, timeout: float) -> None:
    """Run a build step, its output to the debug log; on failure raise with its last lines."""
    tail: deque[str] = deque(maxlen=25)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True
        )
    except OSError as exc:
        raise ImageError(f"cannot run {what}: {exc}") from exc
    timed_out = threading.Event()

    def stop() -> None:  # a hung download must not hang the build
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # debootstrap's downloads and dpkg too

    timer = threading.Timer(timeout, stop)
    timer.start()
    assert proc.stdout is not None
    try:
        with proc:
            for line in proc.stdout:
                tail.append(line.rstrip())
                log.debug("%s: %s", what, line.rstrip())
            code = proc.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise ImageError(f"{what} took longer than {timeout:.0f}s and was stopped")
    if code != 0:
        raise ImageError(f"{what} failed with exit code {code}:\n" + "\n".join(tail))


def _unmount_below(path: Path) -> None:
    """Unmount anything a failed debootstrap left mounted inside the root filesystem (proc,
    sys), deepest first, so removing the directory never reaches into the host."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [m.split()[1].replace("\\040", " ") for m in mounts if len(m.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        log.debug("unmounting %s", point)
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create the cache directory {path}: {exc}; set DOCKERCOMP_CACHE_DIR") from exc


def _mib(path: Path) -> int:
    return path.stat().st_size >> 20


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
