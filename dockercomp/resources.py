"""Where the project's files are: the workloads, the dashboard's static files, installer.sh
and cleanup.

An installed wheel carries them as package data inside the ``dockercomp`` package
(``dockercomp/workloads/``, ``dockercomp/dashboard/``, ``dockercomp/_scripts/``, mapped so by
pyproject.toml); an editable install runs from a checkout, where they sit at the top of the
repository (the two scripts are also linked from ``dockercomp/_scripts/`` there, for the wheel).
Every other module asks here instead of computing paths from its own ``__file__``, which
points somewhere else in each of the two layouts.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # site-packages/dockercomp, or the checkout's dockercomp/
SCRIPTS = ("installer.sh", "cleanup")


def checkout() -> Path | None:
    """The project's checkout when running from one (an editable install), else None: the
    master builds the volunteers' wheel from its sources."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "server").is_dir() else None


def _find(inside: str, at_top: str) -> Path:
    """``dockercomp/INSIDE`` in an installed wheel, else ``AT_TOP`` in the checkout."""
    installed = PACKAGE / inside
    if installed.exists():
        return installed.resolve()  # in a checkout, _scripts/ holds links to the top's scripts
    root = checkout()
    return root / at_top if root is not None else installed


def workloads_dir() -> Path:
    """The workloads shipped with dockercomp: one directory each, with its Dockerfile."""
    return _find("workloads", "workloads")


def dashboard_dir() -> Path:
    """The operator dashboard's static files (index.html, app.js, vendor/)."""
    return _find("dashboard", "dashboard")


def script(name: str) -> Path:
    """installer.sh or cleanup (the path may not exist in a stripped-down install)."""
    if name not in SCRIPTS:
        raise ValueError(f"no script {name!r}; there are {', '.join(SCRIPTS)}")
    return _find(f"_scripts/{name}", name)
