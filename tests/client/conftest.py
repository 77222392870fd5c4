"""Fixtures for the client's tests. Docker-backed ones skip on a machine without an engine,
but FAIL when the CI environment variable is set, so a green CI means they really ran."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockercomp.client import images


@pytest.fixture(scope="session")
def wordfreq_image(docker_client: docker.DockerClient, base_image: str) -> str:
    """The wordfreq workload for the client's tests, over the base image (in place of
    tests/fixtures/cluster.py's)."""
    return images.build_workload(docker_client, "wordfreq")


# --- the client daemon against a real master ---------------------------------------------


@pytest.fixture
def fast_master(master_factory: Callable[..., Any], tmp_path: Path) -> Any:
    """A master of its own that tells clients to heartbeat, and to ask again for work, every
    0.2s (so aborts and new units reach a daemon at once), with a quick reaper."""
    config = tmp_path / "fast-master.toml"
    config.write_text("[server]\nheartbeat_interval = 0.2\n")
    return master_factory("--reap-interval", "0.2", "--config", str(config))


@pytest.fixture
def restart_master(master_factory: Callable[..., Any]) -> Callable[[Any], Any]:
    """Start a master again after it was stopped: same flags, port and data directory, so a
    client that knew it finds it where it was."""

    def restart(old: Any) -> Any:
        assert old.proc.poll() is not None, "stop the master first"
        flags = old.args[old.args.index("--data-dir") + 2 :]
        return master_factory(*flags, "--port", str(old.port), data_dir=old.data_dir)

    return restart


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start client daemons with stub runners (daemon_stub.py) in threads:
    ``start_daemon(master, slots=2, gated=True)``; any still running is stopped at the end."""
    from .daemon_stub import Daemons

    daemons = Daemons(tmp_path)
    yield daemons.start
    daemons.close()
