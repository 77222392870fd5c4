"""Fixtures for the end-to-end tests: a real master process, real client daemon processes and
real containers of the local Docker engine (the daemons and images: tests/fixtures/cluster.py).

Without an engine these tests skip on a laptop but FAIL when the CI environment variable is
set, so a green CI means they really ran. After the whole session no container labelled
``dockercomp.client`` may be left, running or not.
"""

from pathlib import Path
from typing import Any

import pytest

# A master that answers within a second: clients heartbeat (and ask again for work) every
# 0.3s, a client silent for 4s loses its leases, a lease lives 5s past its unit's timeout.
MASTER_CONFIG = "[server]\nheartbeat_interval = 0.3\n"
MASTER_FLAGS = ("--reap-interval", "0.2", "--heartbeat-timeout", "4", "--lease-slack", "5")


@pytest.fixture(scope="session", autouse=True)
def no_container_left_behind(no_container_left_behind: None) -> None:
    """Every end-to-end test is checked by tests/fixtures/cluster.py's no_container_left_behind."""


@pytest.fixture
def master(master_factory: Any, tmp_path: Path) -> Any:
    """A master of its own for one test, quick to notice silent clients and expired leases."""
    config = tmp_path / "master.toml"
    config.write_text(MASTER_CONFIG)
    return master_factory(*MASTER_FLAGS, "--config", str(config))
