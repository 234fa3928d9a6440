"""The supervisor: one thread that owns every worker and all dispatch state.

::

    caller threads             supervisor thread                  worker processes
    ──────────────             ─────────────────                  ────────────────
    Pool.submit
      pickles fn and args
      Task ──(lock)──► pending
    Pool.cancel, Pool.stats
      ─(lock)──► requests: run in this thread, answered
                               (a stats census: [_census])
      1 byte ──► wake pipe ──► select([wake, conn 1..n, sentinel 1..n],
                                      timeout = nearest deadline)
                               [_routing]
                               dispatch ── RUN_TASKS ──► conn i ──► recv, run in order
                               route    ◄─ TASK_DONE ─── conn i ◄── send after each task
                                         ◄─ TASK_FAILED
                                         ◄─ LOG_RECORD ─ (any thread of worker i)
                               future.set_result / set_exception
                               [_lifecycle]
                               sentinel i ready: the worker died
                                 → blame its oldest outstanding task,
                                   requeue the others, start a replacement
                               [_deadlines]
                               deadlines: task timeouts (kill the worker's
                                 tree), respawn pacing, stop escalation
                                 (sentinel, SIGTERM, SIGKILL)

Where each part lives: `Supervisor` is one object, run by one thread, but
its methods come from one module per job, each a mixin working on the state
`Supervisor.__init__` sets up (in brackets above):

- ``_supervisor`` (this module): the state, everything callers' threads
  call, the loop, the requests it serves, and the pool's end (stop
  sentinels, then SIGTERM, then SIGKILL; the graces are here);
- ``_routing``: dispatch to the least-loaded worker, and the events routed
  back to futures;
- ``_direct``: idle workers lent to callers' threads while this one waits;
- ``_lifecycle``: workers started (paced), retired, killed, their deaths
  (blame, retry, requeue; a pool broken by failed starts), reaped;
- ``_deadlines``: the nearest deadline to wait for, and what is due then;
- ``_census``: the census behind `Pool.stats`.

Who touches what: only this thread reads the parent's end of a worker's
Pipe and starts, kills and joins workers; only worker i uses the other end
(its threads share it under a lock). Caller threads only append to
``pending`` or ``requests`` (under ``_lock``), take never-started tasks out of
``pending`` to cancel them (``shutdown``, ``clear``; under ``_lock``), and
write one byte to the wake pipe. One exception, for latency: while this
thread waits, a caller may send a task straight to a worker it lent them
because it is idle, and one caller may read that task's reply itself,
doing what this thread would (``_direct``); this thread takes the worker
back, under ``_lock``, before it touches it again. Whatever else a caller wants of the
workers' state (stop a running task, a census for `Pool.stats`) is a
request this thread runs between two events (`Supervisor._ask`). No queue
is shared with a worker, so no lock can be left held by a worker that dies.

Counting (`Pool.stats`): each task is counted once, as its future ends.
Results and errors are counted where this thread sets them
(`pool._outcomes`). Cancels are counted under ``_lock``, as cancelled tasks
are taken out of ``pending`` or found in it; see `Supervisor._dispatch`.

Futures' done callbacks run in this thread, as in ProcessPoolExecutor
(also those of a reply a caller read itself): a callback that blocks
delays every other task of the pool.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing.context
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._census import Census
from ._deadlines import Deadlines
from ._direct import Direct
from ._errors import PoolClosed
from ._futures import Future
from ._lifecycle import MAX_START_FAILURES, RESPAWNS_PER_SECOND, WorkerLifecycle
from ._memory import OomWatch
from ._outcomes import cancel, copy_error, fail
from ._processes import block_async_signals, children_of, load_psutil
from ._routing import Routing
from ._start import prestart
from ._tally import Tally
from ._workers import Paces, Task, WorkerHandle, available_cpus

if TYPE_CHECKING:
    from ._stats import PoolStats


logger = logging.getLogger("pool")

# MAX_START_FAILURES and RESPAWNS_PER_SECOND are pool._lifecycle's tuning
# constants, also named here, where they lived before the split (the tests read
# them here). The code reads them there: a change, or a test's patch, goes there.
__all__ = ["MAX_START_FAILURES", "RESPAWNS_PER_SECOND", "Supervisor"]

T = TypeVar("T")

# How long workers have to leave after the stop sentinel before SIGTERM, and
# after SIGTERM before SIGKILL. On an abort (Ctrl-C) the caller is waiting, so
# running tasks get a shorter grace.
STOP_GRACE = 5.0
ABORT_GRACE = 1.0
TERMINATE_GRACE = 2.0

# The longest single wait for events; a later deadline is waited for in steps.
MAX_WAIT = 3600.0


class Supervisor(Direct, Routing, WorkerLifecycle, Deadlines, Census):
    """Owns the workers of one `Pool`; see the module docstring."""

    def __init__(
        self,
        *,
        max_workers: int,
        context: multiprocessing.context.BaseContext,
        init: tuple[bytes, bytes] | None,
        max_tasks_per_child: int | None,
        max_memory_per_child: int | None = None,
        log_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_workers = max_workers
        self._context = context
        self._init = init
        self._max_tasks = max_tasks_per_child
        self._max_memory = max_memory_per_child
        self._log_level = log_level
        self._clock = clock
        self._oom = OomWatch()

        self._lock = threading.Lock()
        self._pending: deque[Task] = deque()
        # While this thread waits: the idle workers a caller may send one task
        # to itself, and the one caller reading a reply itself (see _direct).
        self._waiting = False
        self._lent: list[WorkerHandle] = []
        self._reader: int | None = None  # that caller's thread ident
        self._reading: WorkerHandle | None = None  # and the worker it reads
        self._reader_busy = False  # it handles events: it is not to be disturbed
        self._recalled = False  # a reader was taken back and has not left yet
        self._read_here = False  # the last reply read was read by its caller's thread: see _send_direct
        self._reader_gone = threading.Condition(self._lock)
        self._closing = False
        self._aborting = False
        self._broken: BaseException | None = None
        self._tally = Tally()
        # Questions from callers' threads, answered by this thread (see _ask).
        self._requests: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._requests_closed = False

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._recall_r, self._recall_w = os.pipe()
        os.set_blocking(self._recall_r, False)
        self._wake_sent = False
        self._wake_closed = False

        self._workers: list[WorkerHandle] = []
        self._by_conn: dict[Any, WorkerHandle] = {}
        self._by_sentinel: dict[int, WorkerHandle] = {}
        self._start_failures = 0
        self._paces = Paces()  # each function's measured call time: see pool._workers
        self._cpus = available_cpus()  # a reader spins only with one free: see pool._direct
        self._stop_deadline: float | None = None
        self._terminated = False
        self._spawned_at: deque[float] = deque()
        self.spawned = 0  # worker processes started, first ones included
        self._spawn_deadline: float | None = None
        self._thread = threading.Thread(target=self._main, name="pool-supervisor", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()

    # --- called from caller threads ----------------------------------------

    def submit(self, task: Task) -> None:
        if not self._started:
            self._start_thread()
        with self._lock:
            if self._closing:
                raise PoolClosed("cannot submit: the pool was shut down")
            if self._broken is not None:
                raise copy_error(self._broken)
            self._tally.submitted += 1
            if self._lent and self._send_direct(task):
                return
            self._pending.append(task)
            self._wake()

    def shutdown(self, cancel_futures: bool) -> None:
        with self._lock:
            self._closing = True
            cancelled = self._take_waiting() if cancel_futures else []
            self._wake()
        # Outside the lock: cancelling runs done callbacks, which may submit.
        for task in cancelled:
            task.future.cancel()
        if not self._started:
            self._close_wake_pipe()

    def abort(self) -> None:
        """Stop now (Ctrl-C): cancel everything, end the workers quickly."""
        with self._lock:
            self._closing = True
            self._aborting = True
            doomed = list(self._pending)
            self._pending.clear()
            # Counted as taken, as in _take_waiting: each ends cancelled below.
            self._tally.cancelled += len(doomed)
            self._wake()
        for task in doomed:
            cancel(task)
        if not self._started:
            self._close_wake_pipe()

    def clear(self) -> int:
        """Cancel every task that waits and never started; return how many this cancelled."""
        with self._lock:
            taken = self._take_waiting()
            # Those a caller cancelled already were not cancelled by us.
            fresh = sum(1 for task in taken if not task.future.done())
        for task in taken:  # outside the lock, as in shutdown
            task.future.cancel()
        return fresh

    def pending(self) -> list[Future[Any]]:
        """The futures of the tasks that wait and never started, oldest first."""
        with self._lock:
            # Under the lock no task starts (see _dispatch); a caller may still
            # cancel one at any time.
            return [task.future for task in self._pending if _waiting(task)]

    def _take_waiting(self) -> list[Task]:
        """Take the tasks that never started out of the queue, to be cancelled (``_lock`` held).

        A task put back after its worker died is already running for its
        caller: it stays, to end in a result or an error. Those a caller
        cancelled meanwhile go too. All are counted cancelled now, with
        their leaving the queue, so a census sees each task either queued or
        cancelled: once out of the queue none can start, so each ends
        cancelled when the caller cancels it, after releasing the lock.
        """
        taken = [t for t in self._pending if not t.future.running()]
        if taken:
            kept = [t for t in self._pending if t.future.running()]
            self._pending.clear()
            self._pending.extend(kept)
            self._tally.cancelled += len(taken)
        return taken

    def stop_task(self, future: Future[Any]) -> bool:
        """Stop the task behind ``future`` wherever it is; True if it ended cancelled.

        A running task's worker is killed with its children and replaced.
        """
        return self._ask(lambda: self._stop(future), future.cancelled)

    def stats(self) -> PoolStats:
        """The counts and the workers now; see `PoolStats`."""
        # A census in this thread, then /proc is read in the caller's.
        from ._stats import with_usage

        return with_usage(self._ask(self._census, self._census))

    def _ask(self, question: Callable[[], T], otherwise: Callable[[], T]) -> T:
        """Run ``question`` in the supervisor thread, between two events, and return its answer.

        That thread owns the workers and changes their state without a
        lock, so a caller's thread that needs that state asks it. When the
        thread does not run (not started yet, or finished), nothing changes
        that state, and ``otherwise`` answers in the caller's thread. Asked
        from that thread itself (a done callback), ``question`` runs at once:
        waiting for the answer would wait forever.
        """
        if threading.current_thread() is self._thread or self._handling_here():
            return question()  # this thread, or a caller doing its work while it waits
        while True:
            reply: concurrent.futures.Future[T] = concurrent.futures.Future()
            with self._lock:
                # Alive too: in a child forked from this process the thread is gone.
                served = self._started and not self._requests_closed and self._thread.is_alive()
                if served:
                    self._requests.append((question, reply))
                    self._wake()
            if served:
                return reply.result()  # closing, it still answers all (see the end of _main)
            if self._started:
                return otherwise()  # finished
            with self._start_lock:  # held, the thread cannot start
                if not self._started:
                    return otherwise()
            # It started meanwhile: ask it.

    def join(self, timeout: float | None = None) -> None:
        if self._started:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._started and self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self._workers) if w.pid is not None]

    def start(self) -> None:
        """Start the workers now rather than at the first submit."""
        self._start_thread()

    def _start_thread(self) -> None:
        with self._start_lock:
            if not self._started:
                self._load_modules()
                self._thread.start()
                self._started = True

    def _load_modules(self) -> None:
        """Import, in the caller's thread, what this pool loads only when it needs it.

        Not in the supervisor thread: a process forked while another thread
        is inside an import waits for that import's lock for ever. That is
        a fork of the caller (a server forking its workers, a fork-based
        pool) while this thread imports, or, with the ``fork`` start
        method, our own fork of a worker while the caller imports. The fork
        server boots meanwhile, in its own process.
        """
        prestart(self._context)
        # Each a few milliseconds that `import pool` no longer costs: the
        # workers' Pipes, and the errors of workers that die (whose base,
        # BrokenProcessPool, comes with concurrent.futures.process).
        import multiprocessing.connection  # noqa: F401

        from . import _broken  # noqa: F401

        load_psutil()
        if self._context.get_start_method() == "fork":
            from . import _stats  # noqa: F401
            from ._serialize import load_cloudpickle

            load_cloudpickle()

    def _wake(self) -> None:
        # Called with _lock held, so the pipe cannot be closed under us (a
        # closed fd number may already name someone else's file). The flag
        # spares a syscall per submit while a wake-up is pending; the
        # supervisor clears it and drains the pipe together, under the lock,
        # before it looks at `pending`.
        if not self._wake_sent and not self._wake_closed:
            self._wake_sent = True
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # full (a wake-up is pending anyway) or closed (shut down)

    # --- the supervisor thread ---------------------------------------------

    def _main(self) -> None:
        block_async_signals()
        # One selector for the pool's life, updated as workers come and go:
        # building one per wait (multiprocessing.connection.wait) costs more
        # than the rest of a tiny task's round trip in this thread.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            self._spawn_missing()
            while True:
                self._serve_requests()
                self._dispatch()
                if self._finished():
                    break
                self._wait_and_handle()
        except BaseException as exc:  # a bug here must fail futures, not hang them
            logger.exception("pool supervisor crashed; failing all work")
            self._fail_all(exc)
            for worker in list(self._workers):
                self._kill(worker)
            raise
        finally:
            try:
                self._reap_all()
            finally:
                # Only now: once requests are closed, callers read the state
                # from their own threads (_ask), so it must not change any more.
                with self._lock:
                    self._requests_closed = True
                self._serve_requests()
                self._selector.close()
                self._close_wake_pipe()

    def _wait_and_handle(self) -> None:
        now = self._clock()
        deadline = self._next_deadline(now)
        # Capped: a far deadline (a timeout of weeks) overflows the selector.
        timeout = None if deadline is None else min(max(0.0, deadline - now), MAX_WAIT)
        self._lend()
        try:
            while True:
                ready = [key.fileobj for key, _ in self._selector.select(timeout)]
                # Nothing, and no deadline: the pipe of a worker whose reply a
                # caller read itself meanwhile (see _direct). Waking to do
                # nothing would take the workers back from the callers.
                if ready or timeout is not None:
                    break
        finally:
            self._reclaim()
        dead: list[WorkerHandle] = []
        for obj in ready:
            if obj == self._wake_r:
                # Under the lock, with _wake: the flag is set exactly while a
                # byte is in the pipe. Clearing it apart from the read could
                # swallow a new byte with the flag left set, and then no
                # caller would ever wake us again.
                with self._lock:
                    self._wake_sent = False
                    os.read(self._wake_r, 4096)
            elif isinstance(obj, int):
                dead.append(self._by_sentinel[obj])
            else:
                worker = self._by_conn.get(obj)
                if worker is not None:
                    self._receive(worker)
        for worker in dead:
            self._on_exit(worker)
        self._enforce_deadlines(self._clock())

    # --- requests from callers ---------------------------------------------

    def _serve_requests(self) -> None:
        while self._requests:
            question, reply = self._requests.popleft()
            try:
                reply.set_result(question())
            except BaseException as exc:  # noqa: BLE001  # the caller gets it instead of a hang
                reply.set_exception(exc)

    def _stop(self, future: Future[Any]) -> bool:
        if future.done():
            return future.cancelled()
        with self._lock:
            queued = next((t for t in self._pending if t.future is future), None)
            if queued is not None:
                self._pending.remove(queued)
        if queued is not None:
            return self._cancel_taken(queued)
        for worker in self._workers:
            for index, task in enumerate(worker.outstanding):
                if task.future is not future:
                    continue
                if index == 0 and not worker.doomed:
                    self._end_running(worker)
                # Queued behind in its pipe, it will still run; its result is dropped.
                return self._cancel_taken(task)
        return False

    def _cancel_taken(self, task: Task) -> bool:
        """Cancel a task not ended yet that this thread took out of the queue or a worker.

        It surely ends cancelled (out of the queue it cannot start, and only
        this thread ends a task a worker holds), so it is counted first, as
        `pool._outcomes` counts: its done callbacks find it counted.
        """
        with self._lock:
            self._tally.cancelled += 1
        return cancel(task)

    # --- the end -----------------------------------------------------------

    def _finished(self) -> bool:
        if not (self._closing or self._broken is not None):
            return False
        if not self._aborting and (self._pending or any(w.outstanding for w in self._workers)):
            return False
        if not self._workers:
            return True
        if self._stop_deadline is None:
            for worker in self._workers:
                if not worker.stopping:
                    self._send_stop(worker)
            self._stop_deadline = self._clock() + (ABORT_GRACE if self._aborting else STOP_GRACE)
        return False

    def _escalate(self) -> None:
        if not self._terminated:
            self._terminated = True
            for worker in self._workers:
                # SIGTERM ends the worker but not what its task started, and
                # once it is gone they cannot be found from it: note them now.
                if worker.pid is not None:
                    worker.children = children_of(worker.pid)
                try:
                    worker.process.terminate()
                except (OSError, ValueError):
                    pass
            self._stop_deadline = self._clock() + TERMINATE_GRACE
        else:
            for worker in self._workers:
                self._kill(worker)
            self._stop_deadline = self._clock() + TERMINATE_GRACE

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            self._broken = error
            queued = list(self._pending)
            self._pending.clear()
        sent: list[Task] = []
        for worker in self._workers:
            sent.extend(worker.outstanding)
            worker.outstanding.clear()
        self._fail_taken(queued, error)
        for task in sent:
            fail(task, error, self._tally)  # one that ended already was counted then

    def _close_wake_pipe(self) -> None:
        with self._lock:
            if self._wake_closed:
                return
            self._wake_closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
            if not self._recalled:  # else the reader taken back closes it as it leaves
                os.close(self._recall_r)
                os.close(self._recall_w)


def _waiting(task: Task) -> bool:
    """Queued and never started: not running (as one put back after its worker died), not ended."""
    return not (task.future.running() or task.future.done())
