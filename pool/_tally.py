"""The running counts of a pool, which `Pool.stats` reports (see `pool._stats`)."""

from __future__ import annotations

__all__ = ["Tally"]


class Tally:
    """The running counts of one pool, kept by its supervisor.

    ``done``, ``failed`` and ``retried`` are written only by the supervisor
    thread, where it ends a task's future (`pool._outcomes`) or puts a task
    back. ``submitted`` and ``cancelled`` are written under the supervisor's
    lock, since callers' threads submit and cancel too. A task a caller
    cancels with ``future.cancel()`` while it waits in the queue is counted
    by the supervisor when it takes it out (see `Supervisor._dispatch`).
    """

    __slots__ = ("cancelled", "done", "failed", "retried", "submitted")

    def __init__(self) -> None:
        self.submitted = 0
        self.done = 0
        self.failed: dict[str, int] = {}
        self.cancelled = 0
        self.retried = 0

    def fail(self, error: BaseException) -> None:
        name = type(error).__name__
        self.failed[name] = self.failed.get(name, 0) + 1
