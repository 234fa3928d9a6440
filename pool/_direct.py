"""Direct dispatch and direct receive: a caller's thread doing the supervisor's work while it waits.

Part of `Supervisor` (see the diagram in `pool._supervisor`), on the state
`Supervisor.__init__` sets up.

Through the supervisor, one tiny task's round trip wakes three threads in
turn: the caller's submit wakes the supervisor, which sends the task; the
worker's reply wakes the supervisor, which sets the future; that wakes the
caller. Each wake-up costs tens of microseconds on a busy machine, more than
the work itself. A caller who submits one task to an idle pool and waits
for it can do both ends itself, and then only the worker and the caller
wake, as in a hand-written Pipe between two processes.

**Lending.** Right before it waits for events, the supervisor lends its idle
workers to callers (`_lend`); from then until it wakes and takes them back
(`_reclaim`), the callers own them, one at a time under ``_lock``, and it
touches none of them. So a worker's state always has one writer: the
supervisor, or, while it waits, one caller.

**Direct dispatch.** A caller's submit that finds a lent worker sends its
task to it itself and records it as `_send_tasks` would (`_send_direct`).
Only tasks the supervisor need not watch go direct: no timeout (a deadline
would not be in the wait already begun), no shared memory, small.

**Direct receive.** A thread that then waits for that task's future, while
the supervisor still waits, takes the worker's pipe out of the
supervisor's selector and reads the reply itself (`receive_direct`): at
most one such reader at a time. It handles the events exactly as the
supervisor would (`Routing._handle_frames`), then puts the pipe back and
lends the worker again, so the next submit goes direct too. The future's
done callbacks and the task's log records run after that, in the reader's
thread, once it holds nothing of the supervisor's: a callback may ask the
pool anything. When the supervisor wakes for anything else, it recalls the
reader (a byte on the recall pipe ends the reader's poll) and waits for the
pipe back before it goes on; the reader goes back to waiting on the future.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import select
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._futures import Future
from ._outcomes import cancel, log_record
from ._routing import _encode, _record_sent
from ._tally import Tally
from ._workers import PIPE_BUDGET, Task, WorkerHandle, task_size

__all__ = ["Direct"]


class Direct:
    """Lending workers to callers' threads, as part of `Supervisor`; see the module docstring."""

    # The supervisor's state this part reads or writes: set up in
    # `Supervisor.__init__` (the selector in `Supervisor._main`).
    _max_tasks: int | None
    _max_memory: int | None
    _clock: Callable[[], float]
    _lock: threading.Lock
    _pending: deque[Task]
    _lent: list[WorkerHandle]
    _waiting: bool
    _reader: int | None
    _reader_gone: threading.Condition
    _recall_r: int
    _recall_w: int
    _requests: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
    _closing: bool
    _broken: BaseException | None
    _tally: Tally
    _selector: selectors.BaseSelector
    _workers: list[WorkerHandle]
    _by_conn: dict[Any, WorkerHandle]
    _thread: threading.Thread

    if TYPE_CHECKING:  # defined by the other parts of Supervisor

        def _handle_frames(
            self, worker: WorkerHandle, frames: list[bytes], logs: list[Any] | None = None
        ) -> None: ...
        def _kill(self, worker: WorkerHandle) -> None: ...
        def _wake(self) -> None: ...

    # --- lending, in the supervisor's thread --------------------------------

    def _lend(self) -> None:
        with self._lock:
            if self._pending or self._closing or self._broken is not None or self._max_tasks is not None:
                return
            self._waiting = True
            self._lent.extend(w for w in self._workers if not w.outstanding and w.usable())

    def _reclaim(self) -> None:
        with self._lock:
            self._waiting = False
            self._lent.clear()
            if self._reader is None:
                return
            os.write(self._recall_w, b"\0")
            self._reader_gone.wait_for(lambda: self._reader is None)
            os.read(self._recall_r, 1)  # the one byte written above

    # --- direct dispatch, in a caller's thread ------------------------------

    def _send_direct(self, task: Task) -> bool:
        """Send ``task`` to a lent worker, in the caller's thread (``_lock`` held); False if it may not."""
        if (
            not self._lent
            or self._pending
            or task.timeout is not None
            or task.segment is not None
            or task_size(task) > PIPE_BUDGET
        ):
            return False
        worker = self._lent.pop()
        try:
            worker.conn.send_bytes(_encode(worker, [task]))
            task.future._start()  # fresh, not yet returned to anyone: it cannot be cancelled
            _record_sent(worker, [task], self._clock())
        except OSError:
            # Dead or dying: the task never reached it, and runs elsewhere.
            self._discard_lent(worker)
            return False
        except BaseException:
            # Interrupted (Ctrl-C lands in the caller's thread) between marking
            # the function sent and recording the task: what the worker got
            # is unknown, so it is ended, and what it held runs elsewhere. A
            # task not recorded yet ends cancelled: its submit raises.
            if not any(held is task for held in worker.outstanding):
                self._tally.cancelled += 1
                cancel(task)
            self._discard_lent(worker)
            raise
        task.future._direct = (self, worker)
        return True

    def _discard_lent(self, worker: WorkerHandle) -> None:
        """Have the supervisor kill a lent worker a caller could not use or left half changed (lock held)."""
        worker.doomed = True
        worker.unreachable = True
        self._requests.append((lambda: self._kill(worker), concurrent.futures.Future()))
        self._wake()

    # --- direct receive, in a caller's thread -------------------------------

    def receive_direct(
        self, future: Future[Any], worker: WorkerHandle, timeout: float | None
    ) -> float | None:
        """Read the reply to ``future``'s task from ``worker`` in this thread, if the supervisor still waits.

        Returns when the future is done, or the supervisor wants the worker
        back, or the worker's pipe ended, or ``timeout`` passed; returns
        what is left of ``timeout``, for the wait on the future that follows.
        """
        if not self._thread.is_alive():
            return timeout  # a fork of this process, where the supervisor is gone: its lock may be held
        start = time.monotonic()
        with self._lock:
            if not self._may_read(future, worker):
                return timeout
            self._reader = threading.get_ident()
            self._selector.unregister(worker.conn)
            future._hold_callbacks()
        logs: list[Any] = []
        reading = False
        try:
            poller = select.poll()
            poller.register(worker.sock.fileno(), select.POLLIN)
            poller.register(self._recall_r, select.POLLIN)
            while not future.done():
                wait = None if timeout is None else math.ceil((start + timeout - time.monotonic()) * 1000)
                if wait is not None and wait <= 0:
                    break
                ready = poller.poll(wait)
                if not ready or any(fd == self._recall_r for fd, _ in ready):
                    break  # timed out, or recalled: the supervisor reads what came
                reading = True
                try:
                    frames = worker.reader.read()
                except (EOFError, OSError):
                    break  # gone: the supervisor sees the same end and handles it
                self._handle_frames(worker, frames, logs)
                reading = False
        except BaseException:
            if reading:
                self._interrupted(future, worker)
            raise
        finally:
            try:
                self._give_back(worker)
            finally:
                for record in logs:
                    log_record(record)
                future._release_callbacks()
        return None if timeout is None else max(0.0, start + timeout - time.monotonic())

    def _may_read(self, future: Future[Any], worker: WorkerHandle) -> bool:
        """May this thread read ``worker``'s reply to ``future`` now (``_lock`` held)?"""
        return (
            self._waiting
            and self._reader is None
            and self._max_memory is None  # its checks run in the supervisor's thread
            and len(worker.outstanding) == 1
            and worker.outstanding[0].future is future
            and worker.usable()
            and worker.conn in self._by_conn
        )

    def _give_back(self, worker: WorkerHandle) -> None:
        with self._lock:
            if worker.conn in self._by_conn:  # still watched: not dropped while read here
                self._selector.register(worker.conn, selectors.EVENT_READ)
            self._reader = None
            if self._waiting and not worker.outstanding and worker.usable():
                self._lent.append(worker)
            self._reader_gone.notify_all()

    def _interrupted(self, future: Future[Any], worker: WorkerHandle) -> None:
        """Ctrl-C while this thread read or handled events: what it took is unknown.

        The reply may have left the pipe and not reached the future. So
        the future ends cancelled (the pool stopped it), and the worker,
        which may still hold it as running, is ended and replaced.
        """
        with self._lock:
            if future.done():
                return
            self._tally.cancelled += 1
            self._discard_lent(worker)
        future._cancel_running()
