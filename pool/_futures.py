"""The future `Pool.submit` returns: a `concurrent.futures.Future` you can await."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Future"]


class Future(concurrent.futures.Future[T]):
    """A `concurrent.futures.Future` that is also awaitable.

    ``await pool.submit(fn, x)`` works inside a running event loop; the
    result is delivered to the loop thread-safely by `asyncio.wrap_future`.
    Everything that accepts a `concurrent.futures.Future` (``wait``,
    ``as_completed``, ``run_in_executor`` callers) accepts this one.
    """

    __module__ = "pool"

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()
