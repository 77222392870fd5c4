"""The second, empty Docker engine for tests (dockercomp/engines.py): a volunteer that has
no image yet. Without root or dockerd the test skips, or FAILS when CI is set. (The fixture
``empty_engine_url``, one for a test, is in tests/fixtures/docker.py.)"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dockercomp.engines import EngineUnavailable
from dockercomp.engines import empty_engine as _empty_engine
from tests.needs import skip_or_fail


@contextlib.contextmanager
def empty_engine(tmp: Path) -> Iterator[str]:
    """An empty dockerd of its own; its ``unix://`` URL."""
    try:
        with _empty_engine(tmp) as url:
            yield url
    except EngineUnavailable as exc:
        skip_or_fail(str(exc))
