"""The second, empty Docker engine for tests (dockercomp/engines.py): a volunteer that has
no image yet. Without root or dockerd the test skips, or FAILS when CI is set."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from needs import skip_or_fail

from dockercomp.engines import EngineUnavailable
from dockercomp.engines import empty_engine as _empty_engine


@contextlib.contextmanager
def empty_engine(tmp: Path) -> Iterator[str]:
    """An empty dockerd of its own; its ``unix://`` URL."""
    try:
        with _empty_engine(tmp) as url:
            yield url
    except EngineUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture
def empty_engine_url(tmp_path: Path) -> Iterator[str]:
    """The URL of an empty Docker engine of its own for one test."""
    with empty_engine(tmp_path / "engine") as url:
        yield url
