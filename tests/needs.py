"""What a test needs from the machine (a Docker engine, a browser): on a laptop without it the
test skips; when the CI environment variable is set it FAILS, so a green CI means it ran."""

import os
from typing import NoReturn

import pytest


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)
