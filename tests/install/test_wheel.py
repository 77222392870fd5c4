"""The volunteers' wheel, built as the master builds it: it holds every module and every file
the project finds through dockercomp.resources, declares the extras of each role, and once
installed with the client extra into a fresh virtualenv finds its files in site-packages."""

import email.parser
import json
import os
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockercomp import resources
from dockercomp.server.install import build_wheel

ROOT = Path(__file__).resolve().parents[2]
# where each directory of the checkout goes in the wheel (pyproject.toml's package-dir)
PACKAGES = {"dockercomp": "dockercomp", "server": "dockercomp/server", "client": "dockercomp/client",
            "protocol": "dockercomp/protocol"}  # fmt: skip
DATA = {"workloads": "dockercomp/workloads", "dashboard": "dockercomp/dashboard"}
SCRIPTS = {"installer.sh": "dockercomp/_scripts/installer.sh", "cleanup": "dockercomp/_scripts/cleanup"}


def sources(top: str, pattern: str) -> list[Path]:
    return sorted(
        p for p in (ROOT / top).rglob(pattern) if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DOCKERCOMP_WHEEL", raising=False)
        yield build_wheel(str(tmp_path_factory.mktemp("master"))).path


def test_wheel_holds_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{into}/{p.relative_to(ROOT / top)}" for top, into in PACKAGES.items() for p in sources(top, "*.py")}
    assert "dockercomp/server/store/base.py" in expected and "dockercomp/resources.py" in expected
    assert expected - names == set()
    assert [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")] == []


def test_wheel_holds_every_data_file(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    expected = {f"{inside}/{p.relative_to(ROOT / top)}": p for top, inside in DATA.items() for p in sources(top, "*")}
    expected.update({inside: ROOT / name for name, inside in SCRIPTS.items()})
    must = ["workloads/wordfreq/Dockerfile", "workloads/wordfreq/.dockerignore", "workloads/primes/job.json",
            "workloads/kmers/sample.py", "dashboard/index.html", "dashboard/app.js",
            "dashboard/vendor/uPlot.LICENSE"]  # fmt: skip
    assert [m for m in must if f"dockercomp/{m}" not in expected] == []
    assert sorted(set(expected) - set(archive.namelist())) == []
    for name, source in expected.items():
        assert archive.read(name) == source.read_bytes(), name
    for inside in SCRIPTS.values():
        assert archive.getinfo(inside).external_attr >> 16 & stat.S_IXUSR, f"{inside} is not executable"


def test_wheel_declares_the_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(archive.read(metadata).decode())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = meta.get_all("Requires-Dist") or []
    assert {"server", "client"} <= set(meta.get_all("Provides-Extra") or [])
    for extra in ("server", "client"):
        for requirement in project["optional-dependencies"][extra]:
            assert f'{requirement}; extra == "{extra}"' in requires, requirement
    base = {r.split(";")[0] for r in requires if "extra ==" not in r}
    assert base == set(project["dependencies"])
    assert not any(r.startswith(("tornado", "pymongo", "docker")) for r in base), base


def test_resources_in_the_checkout() -> None:
    assert resources.checkout() == ROOT
    assert resources.workloads_dir() == ROOT / "workloads"
    assert resources.dashboard_dir() == ROOT / "dashboard"
    assert resources.script("installer.sh") == ROOT / "installer.sh"
    assert resources.script("cleanup") == ROOT / "cleanup"


def test_installed_with_the_client_extra(wheel: Path, tmp_path: Path) -> None:
    """pip install 'WHEEL[client]', as installer.sh does, into a virtualenv of its own (from the
    package index: here 4 s for the venv and 3.5 s for pip with --no-cache-dir)."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_", "PYTHON", "VIRTUAL_ENV"))}

    def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # cwd is not the checkout, or `python -c` would import the checkout's dockercomp/
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    done = run(sys.executable, "-m", "venv", str(venv))
    assert done.returncode == 0, done.stderr
    python = str(venv / "bin" / "python")
    done = run(python, "-m", "pip", "install", "--quiet", f"{wheel}[client]", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    where = run(python, "-c", "import json, sysconfig; from dockercomp import resources as r; print(json.dumps(["
                "sysconfig.get_paths()['purelib'], str(r.checkout()), str(r.workloads_dir()), str(r.dashboard_dir()), "
                "str(r.script('installer.sh')), str(r.script('cleanup'))]))")  # fmt: skip
    assert where.returncode == 0, where.stderr
    site, checkout, workloads, dashboard, installer, cleanup = json.loads(where.stdout)
    assert checkout == "None"
    package = Path(site).resolve() / "dockercomp"
    assert Path(workloads) == package / "workloads" and (Path(workloads) / "wordfreq" / "Dockerfile").is_file()
    assert Path(dashboard) == package / "dashboard" and (Path(dashboard) / "vendor" / "uPlot.iife.min.js").is_file()
    assert Path(installer) == package / "_scripts" / "installer.sh" and Path(installer).is_file()
    assert Path(cleanup) == package / "_scripts" / "cleanup" and os.access(cleanup, os.X_OK)

    dockercomp = str(venv / "bin" / "dockercomp")
    done = run(dockercomp, "--help")
    assert done.returncode == 0 and "client" in done.stdout, done.stderr
    done = run(dockercomp, "workloads", "list")
    assert done.returncode == 0 and "dockercomp/wordfreq:latest" in done.stdout, done.stderr
    done = run(dockercomp, "client", "uninstall", "--prefix", str(tmp_path / "none"))
    assert done.returncode == 0 and "no install found" in done.stderr, done.stderr
    done = run(dockercomp, "server")  # the server extra is not installed
    assert done.returncode == 1, done.stderr
    assert "pip install 'dockercomp[server]'" in done.stderr and "Traceback" not in done.stderr

    done = run(python, "-m", "pip", "uninstall", "--quiet", "--yes", "docker")  # down to the base
    assert done.returncode == 0, done.stderr
    for argv in (["client"], ["workloads", "list"]):
        done = run(dockercomp, *argv)
        assert done.returncode == 1, (argv, done.stderr)
        assert "pip install 'dockercomp[client]'" in done.stderr and "Traceback" not in done.stderr, argv
    done = run(dockercomp, "status", "j1", "--server", "http://127.0.0.1:1")  # the scientist's commands need neither
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
