"""dockercomp: volunteer computing on Docker.

For scientists, from Python (dockercomp/scientist.py)::

    from dockercomp import Master
    job = Master("https://master.example:8443", token=...).submit("job.json", ["data.txt"])
    print(job.wait(progress=True))

One package, built from the parts at the top of the repository: ``server/`` is imported as
``dockercomp.server`` (its stores as ``dockercomp.server.store.sqlite`` and ``.mongo``),
``client/`` as ``dockercomp.client``, ``protocol/`` as ``dockercomp.protocol``, and this
directory holds the CLI, the settings loader, the scientist's API, the terminal output and the
demo. ``dockercomp.resources`` finds workloads/, dashboard/, installer.sh and cleanup, whether
installed from the wheel or run from a checkout.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Job", "JobFailed", "JobStatus", "Master", "MasterError"]


def __getattr__(name: str) -> Any:
    """The scientist's API, imported when first asked for: the master and the daemon, which
    import this package too, never load it."""
    if name in __all__:
        from dockercomp import scientist

        return getattr(scientist, name)
    raise AttributeError(f"module 'dockercomp' has no attribute {name!r}")
