"""When the supervisor must act without an event, and what it does then.

Part of `Supervisor` (see the diagram in `pool._supervisor`), run only by
its thread, on the state `Supervisor.__init__` sets up. Three kinds of
deadline: a running task's timeout (counted from when it became its
worker's oldest task; the worker's tree is killed), the respawn pacing of
`pool._lifecycle`, and the stop escalation of the pool's end. The loop
waits for events until the nearest one (`_next_deadline`), then acts on
those due (`_enforce_deadlines`).

Apart so that the deadline logic reads on its own, and is tested with a
fake clock (the supervisor's injectable one), without waiting
(tests/test_deadlines.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._outcomes import fail
from ._tally import Tally
from ._task_timeout import TaskTimeout
from ._workers import Task, WorkerHandle


class Deadlines:
    """The deadlines, as part of `Supervisor`; see the module docstring."""

    # The supervisor's state this part reads or writes: set up in
    # `Supervisor.__init__`, owned by its thread.
    _tally: Tally
    _workers: list[WorkerHandle]
    _stop_deadline: float | None
    _spawn_deadline: float | None

    if TYPE_CHECKING:  # defined by the other parts of Supervisor

        def _drain(self, worker: WorkerHandle) -> None: ...
        @staticmethod
        def _runs(worker: WorkerHandle, task: Task) -> bool: ...
        def _end_running(self, worker: WorkerHandle) -> Task: ...
        def _spawn_missing(self) -> None: ...
        def _escalate(self) -> None: ...

    def _next_deadline(self, now: float) -> float | None:
        deadline = _earliest(self._stop_deadline, self._spawn_deadline)
        for worker in self._workers:
            if worker.doomed or not worker.outstanding:
                continue
            task = worker.outstanding[0]
            if task.timeout is not None and task.started is not None:
                due = task.started + task.timeout
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    def _enforce_deadlines(self, now: float) -> None:
        for worker in list(self._workers):
            if worker.doomed or not worker.outstanding:
                continue
            task = worker.outstanding[0]
            if task.timeout is None or task.started is None or now < task.started + task.timeout:
                continue
            # Its result may already be in the pipe: a finished task is not late.
            self._drain(worker)
            if self._runs(worker, task):
                self._end_running(worker)
                fail(task, TaskTimeout(task.name, task.timeout, worker.pid), self._tally)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._escalate()
        if self._spawn_deadline is not None and now >= self._spawn_deadline:
            self._spawn_deadline = None
            self._spawn_missing()


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None
