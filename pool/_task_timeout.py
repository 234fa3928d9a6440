"""`TaskTimeout`: a task stopped for running past its timeout.

Apart from `pool._errors` so that a worker, which never raises it, does not
import ``concurrent.futures`` for its base on Python 3.10 (and with it
``logging``, which a worker imports only for a task that logs).
"""

from __future__ import annotations

import sys

from ._errors import PoolError

__all__ = ["TaskTimeout"]

# On Python 3.10 concurrent.futures.TimeoutError is not the builtin one; a
# TaskTimeout must be caught by `except TimeoutError` and by code written for
# concurrent.futures alike.
_TIMEOUT_BASES: tuple[type[BaseException], ...] = (TimeoutError,)
if sys.version_info < (3, 11):
    import concurrent.futures

    _TIMEOUT_BASES += (concurrent.futures.TimeoutError,)


class TaskTimeout(PoolError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """The task ran longer than its timeout; its worker was killed and replaced.

    Unlike `TimeoutError` from ``future.result(timeout=...)``, which only
    stops *waiting*, this means the task itself was stopped.
    """

    __module__ = "pool"

    def __init__(self, task: str | None, timeout: float, pid: int | None = None) -> None:
        self.task = task
        self.timeout = timeout
        self.pid = pid
        where = f" in worker pid {pid}" if pid is not None else ""
        super().__init__(f"{task or 'task'} ran past its timeout of {timeout:g}s{where}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.timeout, self.pid))
