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
direct too. The task's log records are handled in its thread before
``result`` returns, as they come before the result. A future with done
callbacks is left to the supervisor, and callbacks added meanwhile are
handed to it: they run in its thread, as always, never inside the
caller's ``result``, where the caller may hold a lock a callback takes.

**Spinning.** For a call of a function measured short, the reader polls
for the reply without sleeping before it sleeps, and, while callers read
their replies themselves, a caller's send asks the worker to poll for the
next task the same way once it has replied (`pool._spin`, `_spin_for`).

**Taking it back.** When the supervisor wakes for anything else, it takes
the worker back at once (`_reclaim`): a byte on the recall pipe ends the
reader's poll, and the reader, which checks under ``_lock`` that the worker
is still its own before each read, goes back to waiting on the future. It
waits only for a reader in the middle of handling events; a reader
waiting in poll may be running a signal handler that needs the
supervisor. A signal's exception (Ctrl-C) in the reader's thread never
leaves the worker taken (`_settle`); one that lands between reading a
reply and delivering it ends that task cancelled and its worker replaced,
since the reply may be lost.

**A limit.** A signal handler that waits for the pool (a result, a
shutdown) deadlocks if it lands while its thread holds the pool's lock or
handles a reply for it, a few microseconds of each round trip: have the
handler set a flag, or stop the pool from another thread.
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
from ._spin import SPIN, spin
from ._tally import Tally
from ._workers import PIPE_BUDGET, Paces, Task, WorkerHandle, task_size

__all__ = ["Direct"]

# The longest single poll of a reader; a longer wait polls again.
MAX_POLL = 3600.0
# How many times a reader tries to give its worker back when signals' exceptions
# stop it (each retry is from a new exception: Ctrl-C pressed again and again).
SETTLE_TRIES = 8


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
    _read_here: bool
    _reader_gone: threading.Condition
    _requests_closed: bool
    _wake_closed: bool
    _recall_r: int
    _recall_w: int
    _requests: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
    _closing: bool
    _broken: BaseException | None
    _tally: Tally
    _selector: selectors.BaseSelector
    _workers: list[WorkerHandle]
    _paces: Paces
    _cpus: int
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
            self._read_here = False  # this thread woke: perhaps for a reply nobody read
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
            # The worker spins for the next task only if this caller reads its
            # replies itself (a loop of submit, then result), not if they go
            # to callbacks, an event loop or as_completed.
            spin = self._spin_for(task.name, worker) if self._read_here else 0.0
            worker.conn.send_bytes(_encode(worker, [task], spin))
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
        self._in_supervisor(lambda: self._kill(worker))

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
                taken = True
                self._reader = me
                future._hold_callbacks()
                self._reading = worker
                self._selector.unregister(worker.conn)
                spinning = self._spin_for(worker.outstanding[0].name, worker)
            poller = select.poll()
            poller.register(worker.sock.fileno(), select.POLLIN)
            poller.register(self._recall_r, select.POLLIN)
            while not future.done():
                ready = _poll(poller, deadline, spinning)
                spinning = 0.0
                if ready is None:
                    break  # the deadline passed
                if not ready:
                    continue  # the spin or the longest poll passed
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
            try:
                if taken:
                    self._settle(future, worker, reading)
            finally:
                # Here, as the supervisor would, before the result is returned.
                for record in logs:
                    log_record(record)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _handling_here(self) -> bool:
        """Is this thread a reader handling events, so that the supervisor waits for it?

        Without ``_lock``: only the reader sets and clears ``_reader_busy``,
        and the supervisor takes a worker back only from a reader not busy.
        """
        return self._reader_busy and self._reader == threading.get_ident()

    def _may_read(self, future: Future[Any], worker: WorkerHandle) -> bool:
        """May this thread read ``worker``'s reply to ``future`` now (``_lock`` held)?"""
        return (
            self._waiting
            and self._reader is None
            and not self._recalled  # the last reader taken back has not left yet
            and self._max_memory is None  # its checks run in the supervisor's thread
            and not future._done_callbacks  # run by the supervisor (see _settle)
            and len(worker.outstanding) == 1
            and worker.outstanding[0].future is future
            and worker.usable()
            and worker.conn in self._by_conn
        )

    def _spin_for(self, name: str, worker: WorkerHandle) -> float:
        """How long the two ends of a direct round trip of ``name`` on ``worker`` poll without sleeping.

        ``_lock`` held. See `pool._spin`: only for a function measured
        short, and with a CPU each for the caller and ``worker``, besides
        the other workers' tasks.
        """
        if not self._paces.under(name, SPIN):
            return 0.0
        others = sum(1 for w in self._workers if w.outstanding and w is not worker)
        return SPIN if others + 2 <= self._cpus else 0.0

    def _settle(self, future: Future[Any], worker: WorkerHandle, interrupted: bool) -> None:
        """Give the worker back, and the future's held callbacks to the supervisor's thread.

        Done again when a signal's exception stops it (a few times at most):
        each step acts before it clears the flag that asks for it, so it is
        done once, wherever the exception landed. The exception goes on
        once all is settled.
        """
        pending: BaseException | None = None
        orphaned = False
        for _ in range(SETTLE_TRIES):
            try:
                with self._lock:
                    if interrupted and not future.done():
                        # Stopped between reading the reply and delivering it:
                        # the reply may be lost. The task ends cancelled (the
                        # pool stopped it), its worker is replaced.
                        if not worker.doomed:
                            self._discard_lent(worker)
                        if future._cancel_running():
                            self._tally.cancelled += 1
                    interrupted = False
                    self._reader_busy = False
                    if self._reader == threading.get_ident():
                        self._watch_again(worker)
                        self._reader = self._reading = None
                        self._read_here = self._read_here or future.done()
                        if self._waiting and not worker.outstanding and worker.usable():
                            self._lent.append(worker)
                    elif self._recalled:
                        self._take_recall()
                    self._reader_gone.notify_all()
                    if future._release_callbacks() and not self._in_supervisor(future._run_callbacks):
                        orphaned = True
                break
            except BaseException as exc:  # noqa: BLE001  # re-raised below, once settled
                pending = exc
        if orphaned:
            future._run_callbacks()
        if pending is not None:
            raise pending

    def _take_recall(self) -> None:
        """As a reader taken back leaves: take the byte that ended its poll (``_lock`` held)."""
        if self._wake_closed:
            # The supervisor ended meanwhile and left the pipe to us.
            os.close(self._recall_r)
            os.close(self._recall_w)
        else:
            try:
                os.read(self._recall_r, 1)
            except BlockingIOError:
                pass  # taken already, by this reader's try that an exception stopped
        self._recalled = False

    def _watch_again(self, worker: WorkerHandle) -> None:
        """Put a worker's pipe back in the supervisor's selector, unless it was dropped."""
        if worker.conn not in self._by_conn:
            return
        try:
            self._selector.register(worker.conn, selectors.EVENT_READ)
        except (KeyError, FileExistsError):
            # There already, or half there: a signal's exception stopped a
            # (un)register between the selector's map and the kernel's set.
            # Out of both, then back in.
            try:
                self._selector.unregister(worker.conn)
            except KeyError:
                pass
            raw = getattr(self._selector, "_selector", None)  # the epoll or poll object
            try:
                raw.unregister(worker.conn.fileno())  # type: ignore[union-attr]
            except (AttributeError, KeyError, OSError):
                pass
            self._selector.register(worker.conn, selectors.EVENT_READ)

    def _in_supervisor(self, job: Callable[[], Any]) -> bool:
        """Have the supervisor's thread run ``job`` between two events (``_lock`` held).

        False if it has ended. It takes workers back before it ends, so a
        reader is not left with callbacks then; if it were, they are its to run.
        """
        if self._requests_closed:
            return False
        self._requests.append((job, concurrent.futures.Future()))
        self._wake()
        return True


def _poll(poller: select.poll, deadline: float | None, spinning: float) -> list[tuple[int, int]] | None:
    """Wait for the descriptors until ``deadline``, without sleeping for the first ``spinning`` seconds.

    None once the deadline has passed; no descriptors if the spin or the
    longest poll passed first.
    """
    wait = MAX_POLL if deadline is None else min(deadline - time.monotonic(), MAX_POLL)
    if wait <= 0:
        return None
    if spinning:
        return spin(poller, min(spinning, wait))
    return poller.poll(math.ceil(wait * 1000))
