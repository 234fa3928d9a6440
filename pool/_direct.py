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

**Direct receive.** A thread that then waits for that task's future
(``result``, ``exception``), while the supervisor still waits, takes the
worker's pipe out of the supervisor's selector and reads the reply itself
(`receive_direct`): at most one such reader at a time. It handles the
events exactly as the supervisor would (`Routing._handle_frames`), then
puts the pipe back and lends the worker again, so the next submit goes
direct too. A future with done callbacks is left to the supervisor, and
callbacks added meanwhile, with the task's log records, are handed to it:
they run in its thread, as always, never inside the caller's ``result``.

**Taking it back.** When the supervisor wakes for anything else, it takes
the worker back at once (`_reclaim`): a byte on the recall pipe ends the
reader's poll, and the reader, which checks under ``_lock`` that the worker
is still its own before each read, goes back to waiting on the future. It
waits only for a reader in the middle of handling events, which runs no
code of the caller's; a reader waiting in poll may be running a signal
handler that needs the supervisor. A signal's exception (Ctrl-C) in the
reader's thread never leaves the worker taken (`_settle`); one that lands
between reading a reply and delivering it ends that task cancelled and
its worker replaced, since the reply may be lost.
"""

from __future__ import annotations

import concurrent.futures
import functools
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

# The longest single poll of a reader; a longer wait polls again.
MAX_POLL = 3600.0


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
    _reading: WorkerHandle | None
    _reader_busy: bool
    _recalled: bool
    _reader_gone: threading.Condition
    _requests_closed: bool
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
        def _drop_conn(self, worker: WorkerHandle) -> None: ...
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
            # A reader in the middle of handling events ends it (it runs no
            # code of the caller's meanwhile); one waiting in poll is not
            # waited for: it may be a signal handler that needs this thread.
            self._reader_gone.wait_for(lambda: not self._reader_busy)
            worker = self._reading
            if worker is None:
                return  # it left meanwhile
            self._reader = self._reading = None
            self._recalled = True
            os.write(self._recall_w, b"\0")  # ends its poll; it takes the byte back as it leaves
            self._watch_again(worker)

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

        Returns when the future is done, or the supervisor took the worker
        back, or the worker's pipe ended, or ``timeout`` passed; returns
        what is left of ``timeout``, for the wait on the future that follows.
        """
        if not self._thread.is_alive():
            return timeout  # a fork of this process, where the supervisor is gone: its lock may be held
        me = threading.get_ident()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        logs: list[Any] = []
        taken = reading = False
        try:
            with self._lock:
                if not self._may_read(future, worker):
                    return timeout
                # In this order, each step undone by _settle whenever a
                # signal's exception (Ctrl-C) stops the next.
                self._reader = me
                taken = True
                future._hold_callbacks()
                self._reading = worker
                self._selector.unregister(worker.conn)
            poller = select.poll()
            poller.register(worker.sock.fileno(), select.POLLIN)
            poller.register(self._recall_r, select.POLLIN)
            while not future.done():
                wait = MAX_POLL if deadline is None else min(deadline - time.monotonic(), MAX_POLL)
                if wait <= 0:
                    break
                ready = poller.poll(math.ceil(wait * 1000))
                if not ready:
                    continue  # the longest poll passed; the deadline is checked above
                with self._lock:
                    if self._reader != me:
                        break  # taken back: the supervisor reads what came
                    self._reader_busy = True
                reading = True
                try:
                    frames = worker.reader.read()
                except (EOFError, OSError):
                    # The pipe ended or broke, what it held perhaps read
                    # already: as the supervisor does, end the worker, whose
                    # death then settles its task.
                    reading = False
                    self._drop_conn(worker)
                    break
                self._handle_frames(worker, frames, logs)
                reading = False
                with self._lock:
                    self._reader_busy = False
                    self._reader_gone.notify_all()
        finally:
            if taken:
                handed: list[Callable[[], None]] = []
                self._settle(future, worker, reading, logs, handed)
                for job in handed:
                    self._in_supervisor(job)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _may_read(self, future: Future[Any], worker: WorkerHandle) -> bool:
        """May this thread read ``worker``'s reply to ``future`` now (``_lock`` held)?"""
        return (
            self._waiting
            and self._reader is None
            and not self._recalled  # the last reader taken back has not left yet
            and self._max_memory is None  # its checks run in the supervisor's thread
            and not future._done_callbacks  # type: ignore[attr-defined]  # run by the supervisor (see _settle)
            and len(worker.outstanding) == 1
            and worker.outstanding[0].future is future
            and worker.usable()
            and worker.conn in self._by_conn
        )

    def _settle(
        self,
        future: Future[Any],
        worker: WorkerHandle,
        interrupted: bool,
        logs: list[Any],
        handed: list[Callable[[], None]],
    ) -> None:
        """Give the worker back, and what is the supervisor's to run into ``handed``.

        Done again from the start when a signal's exception stops it: each
        step is done once, whatever the point it stopped at. The exception
        goes on once all is settled.
        """
        pending: BaseException | None = None
        while True:
            try:
                with self._lock:
                    if interrupted and not future.done():
                        # Stopped between reading the reply and delivering it:
                        # the reply may be lost. The task ends cancelled (the
                        # pool stopped it), its worker is replaced.
                        self._tally.cancelled += 1
                        self._discard_lent(worker)
                        future._cancel_running()
                    interrupted = False
                    self._reader_busy = False
                    if self._reader == threading.get_ident():
                        self._reader = self._reading = None
                        self._watch_again(worker)
                        if self._waiting and not worker.outstanding and worker.usable():
                            self._lent.append(worker)
                    elif self._recalled:
                        os.read(self._recall_r, 1)  # the byte that took the worker back
                        self._recalled = False
                    self._reader_gone.notify_all()
                    if logs:
                        handed.append(functools.partial(_log_records, list(logs)))
                        logs.clear()
                    if future._release_callbacks():
                        handed.append(future._run_callbacks)
                break
            except BaseException as exc:  # noqa: BLE001  # re-raised below, once settled
                pending = exc
        if pending is not None:
            raise pending

    def _watch_again(self, worker: WorkerHandle) -> None:
        """Put a worker's pipe back in the supervisor's selector, unless it is there or dropped."""
        if worker.conn in self._by_conn:
            try:
                self._selector.register(worker.conn, selectors.EVENT_READ)
            except KeyError:
                pass  # there already

    def _in_supervisor(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the supervisor's thread, as done callbacks and log records always run."""
        with self._lock:
            if not self._requests_closed:
                self._requests.append((job, concurrent.futures.Future()))
                self._wake()
                return
        job()  # it has ended


def _log_records(records: list[Any]) -> None:
    for record in records:
        log_record(record)
