"""What a volunteer needs from the master to join: the installer, the cleanup script, and the
client package, a wheel built from this project on first request.

- ``GET /install.sh``: installer.sh, with the master's own URL as the default ``--server``;
- ``GET /cleanup``: the cleanup script;
- ``GET /api/v1/install``: ``key=value`` lines the installer reads (version, wheel, sha256);
- ``GET /dist/WHEEL``: the wheel itself.

The wheel is built with ``pip wheel --no-deps`` from a copy of the sources into
``DATA_DIR/dist`` (``$DOCKERCOMP_WHEEL`` names a ready-made one instead).
"""

import asyncio
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dockercomp import resources

from .errors import NotFound
from .handlers import BaseHandler

log = logging.getLogger(__name__)
# What the wheel is built from: the packages, and the package data pyproject.toml maps in
SOURCES = ("pyproject.toml", "README.md", "dockercomp", "server", "client", "protocol", "workloads", "dashboard",
           "installer.sh", "cleanup")  # fmt: skip
WHEEL_RE = re.compile(r"dockercomp-[0-9A-Za-z.+_]+-py3-none-any\.whl")
HOST_RE = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
SERVER_LINE = "DEFAULT_SERVER=''"


class InstallError(NotFound):
    """The installer or the wheel cannot be served from this master."""


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


_lock = asyncio.Lock()
_built: dict[str, Wheel] = {}


def _script(name: str) -> bytes:
    path = resources.script(name)
    try:
        return path.read_bytes()
    except OSError:
        raise InstallError(f"this master has no {name} (looked for {path})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_wheel(data_dir: str) -> Wheel:
    """The client's wheel: ``$DOCKERCOMP_WHEEL``, or one built from the sources into data_dir/dist."""
    given = os.environ.get("DOCKERCOMP_WHEEL")
    if given:
        path = Path(given)
        if not WHEEL_RE.fullmatch(path.name) or not path.is_file():
            raise InstallError(f"DOCKERCOMP_WHEEL={given} is not a dockercomp wheel")
        return Wheel(path, _sha256(path))
    root = resources.checkout()
    if root is None:
        raise InstallError("this master has no sources to build the client's wheel from; set DOCKERCOMP_WHEEL")
    dist = Path(data_dir) / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=dist) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCES:
            item = root / name
            if item.is_dir():
                shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(item, src / name)
        out = Path(tmp) / "out"
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run([*argv, "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
        wheels = sorted(out.glob("dockercomp-*.whl")) if done.returncode == 0 else []
        if not wheels:
            raise InstallError(f"building the client's wheel failed: {done.stderr.strip()[-2000:]}")
        target = dist / wheels[0].name
        os.replace(wheels[0], target)
    log.info("built the client's wheel %s", target)
    return Wheel(target, _sha256(target))


async def wheel(data_dir: str) -> Wheel:
    async with _lock:
        if data_dir not in _built:
            _built[data_dir] = await asyncio.get_running_loop().run_in_executor(None, build_wheel, data_dir)
        return _built[data_dir]


class ScriptHandler(BaseHandler):
    def text(self, body: bytes) -> None:
        self.set_header("Content-Type", "text/x-shellscript; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


class InstallScriptHandler(ScriptHandler):
    async def get(self) -> None:
        body = _script("installer.sh")
        host = self.request.host or ""
        forwarded = self.request.headers.get("X-Forwarded-Host", "")
        if self.master.settings.behind_proxy and forwarded:  # the host the volunteer asked the proxy for
            host = forwarded.split(",")[-1].strip()  # the proxy's own entry, as tornado takes the scheme
        # with behind_proxy, tornado has set protocol from X-Forwarded-Proto; else it is this server's
        scheme = self.request.protocol if self.request.protocol in ("http", "https") else "http"
        if HOST_RE.fullmatch(host):  # anything else leaves the default empty: --server is then needed
            body = body.replace(SERVER_LINE.encode(), f"DEFAULT_SERVER='{scheme}://{host}'".encode(), 1)
        self.text(body)


class CleanupScriptHandler(ScriptHandler):
    async def get(self) -> None:
        self.text(_script("cleanup"))


class InstallInfoHandler(BaseHandler):
    async def get(self) -> None:
        found = await wheel(self.master.settings.data_path)
        version = found.name.split("-")[1]
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"version={version}\nwheel={found.name}\nsha256={found.sha256}\n")


class WheelHandler(BaseHandler):
    async def get(self, name: str) -> None:
        found = await wheel(self.master.settings.data_path)
        if name != found.name:
            raise NotFound(f"no wheel {name[:100]}; this master serves {found.name}")
        self.set_header("Content-Type", "application/octet-stream")
        with open(found.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                self.write(block)
                await self.flush()
        self.finish()


ROUTES = [
    (r"/install\.sh", InstallScriptHandler),
    (r"/cleanup", CleanupScriptHandler),
    (r"/api/v1/install", InstallInfoHandler),
    (r"/dist/([^/]+)", WheelHandler),
]
