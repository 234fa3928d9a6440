"""The census behind `Pool.stats`: every count and every worker, at one instant.

Part of `Supervisor` (see the diagram in `pool._supervisor`). A caller asks
for it (`Supervisor.stats`, through `Supervisor._ask`), and the
supervisor's thread takes it between two events, when no task is between
two places, so the counts add up; when that thread does not run (not started
yet, or finished), the caller takes it. It reads no /proc: each worker's memory and CPU time are added in the
caller's thread (`pool._stats.with_usage`).

Apart because it is the one reader of all the supervisor's state at once and
writes none of it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from ._tally import Tally
from ._workers import Task, WorkerHandle

if TYPE_CHECKING:
    from ._stats import PoolStats


class Census:
    """The census, as part of `Supervisor`; see the module docstring."""

    # The supervisor's state this part reads: set up in `Supervisor.__init__`.
    _max_workers: int
    _lock: threading.Lock
    _pending: deque[Task]
    _tally: Tally
    _workers: list[WorkerHandle]
    spawned: int

    def _census(self) -> PoolStats:
        from ._stats import PoolStats, WorkerStats

        """The counts and the workers now, without reading /proc (see `pool._stats`).

        Run by this thread between two events (or by a caller once it is
        gone), so no task is in between two places. Callers may still
        cancel queued tasks meanwhile: those still queued are counted here.
        """
        with self._lock:
            queue = list(self._pending)
            submitted = self._tally.submitted
            cancelled = self._tally.cancelled
        queued = 0
        for task in queue:
            if not task.future.done():
                queued += 1
            else:
                cancelled += 1  # by its caller; dropped (and counted) in _dispatch
        workers = tuple(self._workers)
        running = 0
        for worker in workers:
            # A worker runs its oldest task; those behind it in its pipe wait.
            for index, task in enumerate(worker.outstanding):
                if task.future.done():
                    continue
                if index == 0 and not worker.doomed:
                    running += 1
                else:
                    queued += 1
        return PoolStats(
            submitted=submitted,
            queued=queued,
            running=running,
            done=self._tally.done,
            failed=dict(self._tally.failed),
            cancelled=cancelled,
            retried=self._tally.retried,
            restarts=max(0, self.spawned - self._max_workers),
            workers=tuple(
                WorkerStats(w.pid, w.state(), w.running(), w.tasks_done, None, None)
                for w in workers
                if w.pid is not None
            ),
        )
