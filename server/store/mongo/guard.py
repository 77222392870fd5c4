"""A lost MongoDB connection is a StoreUnavailable (HTTP 503, "try again"), not a 500."""

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from pymongo.errors import ConnectionFailure

from ...errors import StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")


def guard(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Report a lost connection as StoreUnavailable (HTTP 503, "try again"), not a 500."""

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except ConnectionFailure as exc:
            raise StoreUnavailable(f"MongoDB is unreachable, try again: {exc}") from None

    return guarded
