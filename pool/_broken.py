"""The exceptions that say the pool's workers broke: ``BrokenProcessPool``'s family.

Apart from `pool._errors` so that a worker, which raises none of these, does
not import ``concurrent.futures.process`` (and with it multiprocessing).
"""

from __future__ import annotations

import signal
from concurrent.futures.process import BrokenProcessPool

from ._errors import PoolError, describe_exit

__all__ = ["InitializerFailed", "WorkerLost"]


class WorkerLost(PoolError, BrokenProcessPool):
    """The worker running the task died from outside the task's Python code.

    It exited (``os._exit``), was killed by a signal (``SIGKILL``, the OOM
    killer, a segfault's ``SIGSEGV``) or vanished. Unlike
    ProcessPoolExecutor's `BrokenProcessPool`, which it subclasses so that old
    ``except`` clauses still catch it, only the task that was running fails:
    the pool replaces the worker and keeps going.
    """

    __module__ = "pool"

    def __init__(
        self,
        pid: int | None,
        exitcode: int | None,
        task: str | None = None,
        attempts: int = 1,
        hint: str | None = None,
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.task = task
        self.attempts = attempts
        self.hint = hint
        parts = [f"worker (pid {pid}) died with {describe_exit(exitcode)}"]
        if task is not None:
            parts.append(f"while running {task}")
        if attempts > 1:
            parts.append(f"after {attempts} attempts")
        message = " ".join(parts)
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.pid, self.exitcode, self.task, self.attempts, self.hint),
        )

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the worker, or ``None`` if it exited."""
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode)
        except ValueError:
            return None


class InitializerFailed(PoolError, BrokenProcessPool):
    """Workers could not start: the initializer (or the worker's import) failed.

    After a few consecutive failed starts the pool stops respawning, fails the
    pending tasks with this error and refuses new work. ``traceback`` holds the
    formatted remote traceback of the last failure.
    """

    __module__ = "pool"

    def __init__(self, message: str, traceback: str = "") -> None:
        self.message = message
        self.traceback = traceback
        super().__init__(message, traceback)

    def __str__(self) -> str:
        text = self.message
        if self.traceback:
            text += f"\n\nRemote traceback:\n{self.traceback.rstrip()}"
        return text
