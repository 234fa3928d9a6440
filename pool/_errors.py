"""The exceptions a caller of `pool` can see, named by whose fault it was.

Every class here pickles and unpickles with all of its attributes (a test
pins this), because they cross process boundaries and are stored by users.
Those that subclass ``BrokenProcessPool`` live in `pool._broken`: a worker
raises none of them, and their base would make it import multiprocessing.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import signal

__all__ = [
    "PoolClosed",
    "PoolError",
    "RemoteError",
    "SerializationError",
    "TaskTimeout",
    "describe_exit",
]

# On Python 3.10 concurrent.futures.TimeoutError is not the builtin one; a
# TaskTimeout must be caught by `except TimeoutError` and by code written for
# concurrent.futures alike.
_TIMEOUT_BASES: tuple[type[BaseException], ...] = tuple(
    {TimeoutError: None, concurrent.futures.TimeoutError: None}
)


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended: ``"exit code 3"`` or ``"signal SIGKILL"``."""
    if exitcode is None:
        return "an unknown cause"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class PoolError(Exception):
    """Base class of every exception raised by `pool` itself."""

    __module__ = "pool"


class PoolClosed(PoolError, RuntimeError):
    """Work was submitted after *your code* shut the pool down."""

    __module__ = "pool"


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


class RemoteError(PoolError):
    """An exception raised in a worker that could not travel back as itself.

    Raised when the original exception cannot be pickled in the worker or
    unpickled in the caller. It carries what is known: the original type's
    name, its message and the formatted remote traceback.
    """

    __module__ = "pool"

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(type_name, message, traceback)

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.traceback:
            text += f"\n\nRemote traceback:\n{self.traceback.rstrip()}"
        return text


class SerializationError(PoolError, pickle.PicklingError):
    """A task's function, arguments or result could not be pickled.

    Raised by ``submit`` itself, in the caller, for the function and its
    arguments (nothing is queued), and by ``future.result()`` for a result
    that could not be pickled in the worker (the worker lives on).
    """

    __module__ = "pool"
