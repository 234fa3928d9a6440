"""The exceptions a caller of `pool` can see, named by whose fault it was.

Every class here pickles and unpickles with all of its attributes (a test
pins this), because they cross process boundaries and are stored by users.
Those that subclass ``BrokenProcessPool`` live in `pool._broken`, and
`TaskTimeout` in `pool._task_timeout`: a worker raises none of them, and
their bases would make it import multiprocessing or concurrent.futures.
"""

from __future__ import annotations

import pickle
import signal

__all__ = [
    "PoolClosed",
    "PoolError",
    "RemoteError",
    "SerializationError",
    "describe_exit",
]


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
