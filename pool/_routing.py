"""What crosses the workers' pipes: tasks and commands out, events back.

Part of `Supervisor` (see the diagram in `pool._supervisor`), run by its
thread (and by a caller's, while the supervisor waits: see `pool._direct`),
on the state `Supervisor.__init__` sets up. Dispatch takes the
queued tasks in order and sends each batch to the least-loaded worker that
may take it (`WorkerHandle.accepts`: the pipe must never fill while the
worker may be blocked writing to us); routing reads a worker's events,
many at a time (`pool._frames`), and ends the futures they answer
(`pool._outcomes`), notes a worker ready, and keeps the running task's
start time, which the deadlines read. The message formats are in
`pool._protocol`.

Apart because this is the hot path, where a task's round trip spends its
time in this thread, and it reaches a worker only through its Pipe, never
its process: starting and ending those is `pool._lifecycle`'s.
"""

from __future__ import annotations

import pickle
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _protocol as proto
from ._outcomes import deliver_error, deliver_result, log_record
from ._segments import Segment, send_segments
from ._serialize import loads, loads_exception
from ._tally import Tally
from ._workers import Batch, Paces, Task, WorkerHandle, smoothed

# Measure a worker's memory (with its children) at most this often, after it
# answers a task. Each look reads /proc for the whole process tree.
MEMORY_CHECK_INTERVAL = 0.1


class Routing:
    """Dispatch and routing, as part of `Supervisor`; see the module docstring."""

    # The supervisor's state this part reads or writes: set up in
    # `Supervisor.__init__`, owned by its thread (or a caller's, `pool._direct`).
    _max_tasks: int | None
    _max_memory: int | None
    _clock: Callable[[], float]
    _lock: threading.Lock
    _pending: deque[Task]
    _tally: Tally
    _workers: list[WorkerHandle]
    _by_conn: dict[Any, WorkerHandle]
    _start_failures: int
    _paces: Paces

    if TYPE_CHECKING:  # defined by the other parts of Supervisor

        def _retire(self, worker: WorkerHandle) -> None: ...
        def _check_memory(self, worker: WorkerHandle, now: float) -> None: ...
        def _drop_conn(self, worker: WorkerHandle) -> None: ...

    # --- dispatch and commands ---------------------------------------------

    def _dispatch(self) -> None:
        if not self._pending:
            return
        batches: dict[WorkerHandle, Batch] = {}
        now = self._clock()
        with self._lock:
            while self._pending:
                task = self._pending[0]
                # In order: a task too big for any busy worker's pipe waits
                # for an idle worker, and the tasks behind it wait with it.
                worker = self._least_loaded(task, batches, now)
                if worker is None:
                    break
                self._pending.popleft()
                if not task.future._start():
                    # A caller's future.cancel() of a queued task runs in the
                    # caller's thread, in concurrent.futures, and tells us
                    # nothing. It is counted here, where the task leaves the
                    # queue, and a census counts those still queued: exact at
                    # every census, and free for the tasks nobody cancels. A
                    # done callback on every future would cost each task's
                    # round trip a callback and a lock, to count rare cancels.
                    self._tally.cancelled += 1
                    continue
                batches[worker].append(task)
        for worker, batch in batches.items():
            if batch.tasks:
                self._send_tasks(worker, batch.tasks, now)

    def _least_loaded(
        self, task: Task, batches: dict[WorkerHandle, Batch], now: float
    ) -> WorkerHandle | None:
        best: WorkerHandle | None = None
        best_load = 0
        for worker in self._workers:
            if not worker.usable():
                continue
            batch = batches.get(worker)
            if batch is None:
                batch = batches[worker] = Batch(worker)
            if not worker.accepts(task, batch, now, self._paces):
                continue
            if self._max_tasks is not None and worker.sent + len(batch.tasks) >= self._max_tasks:
                continue
            load = len(worker.outstanding) + len(batch.tasks)
            if best is None or load < best_load:
                best, best_load = worker, load
        return best

    def _send_tasks(self, worker: WorkerHandle, tasks: list[Task], now: float) -> None:
        segments = [task.segment for task in tasks if task.segment is not None]
        try:
            worker.conn.send_bytes(_encode(worker, tasks))
            if segments:
                send_segments(worker.sock, segments)
        except OSError:
            # The worker died before it could read them (its sentinel will
            # tell us soon): these tasks never reached it, so they are not to
            # blame for its death. Run them elsewhere.
            worker.unreachable = True
            with self._lock:
                self._pending.extendleft(reversed(tasks))
            return
        _record_sent(worker, tasks, now)
        if self._max_tasks is not None and worker.sent >= self._max_tasks:
            self._retire(worker)

    def _send_stop(self, worker: WorkerHandle) -> None:
        worker.stopping = True
        try:
            worker.conn.send_bytes(_pickle(proto.STOP))
        except OSError:
            worker.unreachable = True

    # --- events from workers -----------------------------------------------

    def _receive(self, worker: WorkerHandle) -> None:
        try:
            frames = worker.reader.read()
        except (EOFError, OSError):
            self._drop_conn(worker)
            return
        self._handle_frames(worker, frames)

    def _handle_frames(
        self, worker: WorkerHandle, frames: list[bytes], logs: list[Any] | None = None
    ) -> None:
        """Handle a worker's events; with ``logs``, its log records go there, for the caller to handle."""
        messages = [loads(frame) for frame in frames]
        # Tasks whose ends arrived together took the time since the first of
        # them started together: each is timed as its share of it.
        ended = sum(1 for message in messages if message[0] in (proto.TASK_DONE, proto.TASK_FAILED))
        for message in messages:
            segment = None
            if message[0] == proto.TASK_DONE and message[3] is not None:
                # The result's shared memory came attached to this frame.
                try:
                    segment = Segment(worker.reader.take_fd(), message[3])
                except OSError:
                    self._drop_conn(worker)
                    return
            self._handle(worker, message, segment, ended, logs)
            if message[0] in (proto.TASK_DONE, proto.TASK_FAILED):
                ended = 0

    def _handle(
        self, worker: WorkerHandle, message: Any, segment: Segment | None, ended: int, logs: list[Any] | None
    ) -> None:
        """One event; ``ended`` tasks ended with it (0 once its read's share was timed)."""
        tag = message[0]
        if tag in (proto.TASK_DONE, proto.TASK_FAILED):
            if not worker.outstanding or worker.outstanding[0].id != message[1]:
                return  # a late event for a task that already timed out
            task = worker.outstanding.popleft()
            now = self._clock()
            if ended and task.started is not None:
                elapsed = (now - task.started) / ended
                worker.speed = smoothed(worker.speed, elapsed)
                self._paces.note(task.name, elapsed)
            if worker.outstanding:
                worker.outstanding[0].started = now
            worker.tasks_done += 1
            if tag == proto.TASK_DONE:
                deliver_result(task, message[2], self._tally, segment)
            else:
                deliver_error(task, message[2], worker.pid, self._tally)
            if task.segment is not None:
                task.segment.close()  # it ended: its arguments are not sent again
            if self._max_memory is not None and now - worker.memory_checked >= MEMORY_CHECK_INTERVAL:
                self._check_memory(worker, now)
        elif tag == proto.LOG_RECORD:
            if logs is None:
                log_record(message[1])
            else:
                logs.append(message[1])
        elif tag == proto.WORKER_READY:
            worker.ready = True
            self._start_failures = 0
        elif tag == proto.INIT_FAILED:
            worker.init_error = loads_exception(message[1])

    def _drain(self, worker: WorkerHandle) -> None:
        """Handle the events already in the worker's pipe."""
        if worker.conn in self._by_conn:
            self._handle_frames(worker, worker.reader.read_all())

    @staticmethod
    def _runs(worker: WorkerHandle, task: Task) -> bool:
        return bool(worker.outstanding) and worker.outstanding[0] is task


def _encode(worker: WorkerHandle, tasks: list[Task], spin: float = 0.0) -> bytes:
    """The RUN_TASKS message for ``tasks``, each function's bytes only if the worker lacks it.

    ``spin``: how long the worker then polls for its next task without
    sleeping (see `pool._spin`).
    """
    entries = []
    for task in tasks:
        fn_bytes: bytes | None = task.fn_bytes
        if task.fn_id is not None:
            if task.fn_id in worker.cached:
                fn_bytes = None
            worker.cached.touch(task.fn_id)
        layout = None if task.segment is None else task.segment.layout
        entries.append((task.id, task.kind, task.fn_id, fn_bytes, task.args_bytes, layout))
    return _pickle((proto.RUN_TASKS, entries, spin))


def _record_sent(worker: WorkerHandle, tasks: list[Task], now: float) -> None:
    for task in tasks:
        task.attempts += 1
    if not worker.outstanding:
        tasks[0].started = now
    worker.outstanding.extend(tasks)
    worker.sent += len(tasks)


def _pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=5)
