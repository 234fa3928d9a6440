"""The supervisor: one thread that owns every worker and all dispatch state.

::

    caller threads             supervisor thread                  worker processes
    ──────────────             ─────────────────                  ────────────────
    Pool.submit
      pickles fn and args
      Task ──(lock)──► pending
    Pool.cancel, Pool.stats
      ─(lock)──► requests: run in this thread, answered
      1 byte ──► wake pipe ──► select([wake, conn 1..n, sentinel 1..n],
                                      timeout = nearest deadline)
                               dispatch ── RUN_TASKS ──► conn i ──► recv, run in order
                               route    ◄─ TASK_DONE ─── conn i ◄── send after each task
                                         ◄─ TASK_FAILED
                                         ◄─ LOG_RECORD ─ (any thread of worker i)
                               future.set_result / set_exception
                               sentinel i ready: the worker died
                                 → blame its oldest outstanding task,
                                   requeue the others, start a replacement
                               deadlines: task timeouts (kill the worker's
                                 tree), respawn pacing, stop escalation
                                 (sentinel, SIGTERM, SIGKILL)

Who touches what: only this thread reads and writes the parent's end of a
worker's Pipe and starts, kills and joins workers; only worker i uses the
other end (its threads share it under a lock). Caller threads only append to
``pending`` or ``requests`` (under ``_lock``), take never-started tasks out of
``pending`` to cancel them (``shutdown``, ``clear``; under ``_lock``), and
write one byte to the wake pipe. Whatever else a caller wants of the
workers' state (stop a running task, a census for `Pool.stats`) is a
request this thread runs between two events (`Supervisor._ask`). No queue
is shared with a worker, so no lock can be left held by a worker that dies.

Counting (`Pool.stats`): each task is counted once, as its future ends.
Results and errors are counted where this thread sets them
(`pool._outcomes`). Cancels are counted under ``_lock``, as cancelled tasks
are taken out of ``pending`` or found in it; see `Supervisor._dispatch`.

Futures' done callbacks run in this thread, as in ProcessPoolExecutor: a
callback that blocks delays every other task of the pool.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from . import _protocol as proto
from . import _worker
from ._errors import (
    InitializerFailed,
    PoolClosed,
    TaskTimeout,
    WorkerLost,
    describe_exit,
)
from ._futures import Future
from ._memory import OomWatch, tree_rss
from ._outcomes import cancel, copy_error, deliver_error, deliver_result, fail, log_record
from ._processes import block_async_signals, children_of, kill_all, kill_tree, signals_unblocked
from ._serialize import loads, loads_exception
from ._stats import PoolStats, Tally, WorkerStats, with_usage
from ._workers import Task, WorkerHandle

logger = logging.getLogger("pool")

T = TypeVar("T")

# After this many workers in a row die before they are ready (a failing
# initializer, an import error), the pool stops respawning and fails pending
# work. Higher tolerates a flaky initializer longer; lower gives up sooner on a
# transient failure.
MAX_START_FAILURES = 3

# How long workers have to leave after the stop sentinel before SIGTERM, and
# after SIGTERM before SIGKILL. On an abort (Ctrl-C) the caller is waiting, so
# running tasks get a shorter grace.
STOP_GRACE = 5.0
ABORT_GRACE = 1.0
TERMINATE_GRACE = 2.0

# Respawns allowed per second, per worker slot: a pool whose workers keep
# dying (a poison task with many retries, an outside killer) starts new ones
# at this pace at most instead of spinning.
RESPAWNS_PER_SECOND = 4

# Measure a worker's memory (with its children) at most this often, after it
# answers a task. Each look reads /proc for the whole process tree.
MEMORY_CHECK_INTERVAL = 0.1

# The longest single wait for events; a later deadline is waited for in steps.
MAX_WAIT = 3600.0

class Supervisor:
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
        self._closing = False
        self._aborting = False
        self._broken: BaseException | None = None
        self._tally = Tally()
        # Questions from callers' threads, answered by this thread (see _ask).
        self._requests: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._requests_closed = False

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_sent = False
        self._wake_closed = False

        self._workers: list[WorkerHandle] = []
        self._by_conn: dict[Any, WorkerHandle] = {}
        self._by_sentinel: dict[int, WorkerHandle] = {}
        self._start_failures = 0
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
            self._pending.append(task)
            self._tally.submitted += 1
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
        if threading.current_thread() is self._thread:
            return question()
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
                self._thread.start()
                self._started = True

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
        ready = [key.fileobj for key, _ in self._selector.select(timeout)]
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

    def _census(self) -> PoolStats:
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
        return PoolStats(
            submitted=submitted,
            queued=queued,
            running=sum(1 for w in workers for t in w.outstanding if not t.future.done()),
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

    # --- dispatch -----------------------------------------------------------

    def _dispatch(self) -> None:
        if not self._pending:
            return
        batches: dict[WorkerHandle, list[Task]] = {}
        with self._lock:
            while self._pending:
                task = self._pending[0]
                # A caller's future.cancel() of a queued task runs in the
                # caller's thread, in concurrent.futures, and tells us
                # nothing. It is counted here, where the task leaves the
                # queue, and a census counts those still queued: exact at
                # every census, and free for the tasks nobody cancels. A
                # done callback on every future would cost each task's
                # round trip a callback and a lock, to count rare cancels.
                if task.future.cancelled():
                    self._pending.popleft()
                    self._tally.cancelled += 1
                    continue
                # In order: a task too big for any busy worker's pipe waits
                # for an idle worker, and the tasks behind it wait with it.
                worker = self._least_loaded(task, batches)
                if worker is None:
                    break
                self._pending.popleft()
                if not task.future._start():
                    self._tally.cancelled += 1
                    continue  # cancelled just now
                batches.setdefault(worker, []).append(task)
        now = self._clock()
        for worker, tasks in batches.items():
            self._send_tasks(worker, tasks, now)

    def _least_loaded(self, task: Task, batches: dict[WorkerHandle, list[Task]]) -> WorkerHandle | None:
        best: WorkerHandle | None = None
        best_load = 0
        for worker in self._workers:
            batch = batches.get(worker, [])
            if not worker.usable() or not worker.accepts(task, batch):
                continue
            if self._max_tasks is not None and worker.sent + len(batch) >= self._max_tasks:
                continue
            load = len(worker.outstanding) + len(batch)
            if best is None or load < best_load:
                best, best_load = worker, load
        return best

    def _send_tasks(self, worker: WorkerHandle, tasks: list[Task], now: float) -> None:
        entries = []
        for task in tasks:
            fn_bytes: bytes | None = task.fn_bytes
            if task.fn_id is not None:
                if task.fn_id in worker.cached:
                    fn_bytes = None
                worker.cached.touch(task.fn_id)
            entries.append((task.id, task.kind, task.fn_id, fn_bytes, task.args_bytes))
        try:
            worker.conn.send_bytes(_pickle((proto.RUN_TASKS, entries)))
        except OSError:
            # The worker died before it could read them (its sentinel will
            # tell us soon): these tasks never reached it, so they are not to
            # blame for its death. Run them elsewhere.
            worker.unreachable = True
            with self._lock:
                self._pending.extendleft(reversed(tasks))
            return
        for task in tasks:
            task.attempts += 1
        if not worker.outstanding:
            tasks[0].started = now
        worker.outstanding.extend(tasks)
        worker.sent += len(tasks)
        if self._max_tasks is not None and worker.sent >= self._max_tasks:
            self._retire(worker)

    # --- events from workers -----------------------------------------------

    def _receive(self, worker: WorkerHandle) -> None:
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._drop_conn(worker)
            return
        self._handle(worker, loads(data))

    def _handle(self, worker: WorkerHandle, message: Any) -> None:
        tag = message[0]
        if tag in (proto.TASK_DONE, proto.TASK_FAILED):
            if not worker.outstanding or worker.outstanding[0].id != message[1]:
                return  # a late event for a task that already timed out
            task = worker.outstanding.popleft()
            now = self._clock()
            if task.started is not None:
                elapsed = now - task.started
                worker.speed = elapsed if worker.speed is None else 0.8 * worker.speed + 0.2 * elapsed
            if worker.outstanding:
                worker.outstanding[0].started = now
            worker.tasks_done += 1
            if tag == proto.TASK_DONE:
                deliver_result(task, message[2], self._tally)
            else:
                deliver_error(task, message[2], worker.pid, self._tally)
            if self._max_memory is not None and now - worker.memory_checked >= MEMORY_CHECK_INTERVAL:
                self._check_memory(worker, now)
        elif tag == proto.LOG_RECORD:
            log_record(message[1])
        elif tag == proto.WORKER_READY:
            worker.ready = True
            self._start_failures = 0
        elif tag == proto.INIT_FAILED:
            worker.init_error = loads_exception(message[1])

    def _check_memory(self, worker: WorkerHandle, now: float) -> None:
        worker.memory_checked = now
        if worker.pid is None:
            return
        worker.rss = tree_rss(worker.pid)
        limit = self._max_memory
        if limit is not None and worker.rss is not None and worker.rss > limit and not worker.stopping:
            logger.info(
                "recycling worker pid %s: it uses %d bytes, over max_memory_per_child=%d",
                worker.pid,
                worker.rss,
                limit,
            )
            self._retire(worker)

    def _retire(self, worker: WorkerHandle) -> None:
        """Let the worker finish what it holds and leave by the sentinel; replace it now."""
        self._send_stop(worker)
        self._spawn_missing()

    def _send_stop(self, worker: WorkerHandle) -> None:
        worker.stopping = True
        try:
            worker.conn.send_bytes(_pickle(proto.STOP))
        except OSError:
            worker.unreachable = True

    def _end_running(self, worker: WorkerHandle) -> Task:
        """Kill the worker (and what its task started) to end its running task."""
        task = worker.outstanding.popleft()
        worker.doomed = True
        self._kill(worker)
        return task

    def _drain(self, worker: WorkerHandle, running: Task | None = None) -> None:
        """Handle the events already in the worker's pipe (while ``running`` still runs)."""
        if worker.conn not in self._by_conn:
            return
        try:
            while worker.conn.poll() and (running is None or self._runs(worker, running)):
                self._handle(worker, loads(worker.conn.recv_bytes()))
        except (EOFError, OSError):
            pass

    @staticmethod
    def _runs(worker: WorkerHandle, task: Task) -> bool:
        return bool(worker.outstanding) and worker.outstanding[0] is task

    def _drop_conn(self, worker: WorkerHandle) -> None:
        """The pipe closed or broke: the worker is gone or useless; end it."""
        self._unwatch(worker.conn, self._by_conn)
        if not worker.stopping:
            self._kill(worker)

    def _on_exit(self, worker: WorkerHandle) -> None:
        # Results sent just before the death are still in the pipe: take
        # them first, so only the task really running is blamed.
        self._drain(worker)
        worker.process.join(5)
        exitcode = worker.process.exitcode
        self._forget(worker)
        if self._aborting:
            for task in worker.outstanding:
                if not task.future.done():  # done: stopped by its caller, counted then
                    self._cancel_taken(task)
            worker.outstanding.clear()
        elif not worker.ready:
            self._on_start_failure(worker, exitcode)
        elif worker.outstanding:
            if not worker.doomed:  # doomed: we killed it, its running task is settled
                self._on_task_lost(worker.outstanding.popleft(), worker, exitcode)
            with self._lock:
                # Queued behind the running task, never started: run them
                # elsewhere, ahead of newer work, their attempt not counted.
                for task in reversed(worker.outstanding):
                    if task.future.done():
                        continue  # stopped by its caller meanwhile: nothing to run
                    task.started = None
                    task.attempts -= 1
                    self._pending.appendleft(task)
            worker.outstanding.clear()
        self._spawn_missing()
        if self._broken is not None and self._live() == 0:
            # No worker is left to run what was put back, and none will start.
            self._fail_pending(self._broken)

    def _on_task_lost(self, task: Task, worker: WorkerHandle, exitcode: int | None) -> None:
        if task.future.done():
            return  # stopped by its caller while it waited in the pipe: settled and counted
        if task.attempts <= task.retries:
            task.started = None
            self._tally.retried += 1
            with self._lock:
                self._pending.appendleft(task)
            return
        hint = self._oom_hint(worker, exitcode)
        error = WorkerLost(worker.pid, exitcode, task.name, attempts=task.attempts, hint=hint)
        fail(task, error, self._tally)

    def _oom_hint(self, worker: WorkerHandle, exitcode: int | None) -> str | None:
        if exitcode != -signal.SIGKILL:
            return None
        kills = self._oom.count()
        if kills is not None and worker.oom_kills is not None and kills > worker.oom_kills:
            return "likely out of memory: the kernel's OOM killer ran (cgroup memory.events)"
        if self._max_memory is not None and worker.rss is not None and worker.rss >= 0.9 * self._max_memory:
            return f"likely out of memory: it last used {worker.rss} bytes, near max_memory_per_child"
        return None

    def _on_start_failure(self, worker: WorkerHandle, exitcode: int | None) -> None:
        if any(w.usable() for w in self._workers):
            # Another worker started fine, so starting works: this one was
            # killed from outside, or failed by chance. Respawning is paced
            # by the respawn limit; breaking the pool would stop good work.
            return
        self._start_failures += 1
        if self._start_failures < MAX_START_FAILURES:
            return
        if worker.init_error is not None:
            from ._serialize import format_exception

            error = InitializerFailed(
                f"workers failed to start {self._start_failures} times in a row; "
                f"the initializer raised {type(worker.init_error).__name__}: {worker.init_error}",
                format_exception(worker.init_error),
            )
            error.__cause__ = worker.init_error
        else:
            error = InitializerFailed(
                f"workers failed to start {self._start_failures} times in a row; "
                f"the last one (pid {worker.pid}) died with {describe_exit(exitcode)} "
                "before it was ready"
            )
        self._break(error)

    def _break(self, error: BaseException) -> None:
        with self._lock:
            self._broken = error
        self._fail_pending(error)

    def _fail_pending(self, error: BaseException) -> None:
        with self._lock:
            doomed = list(self._pending)
            self._pending.clear()
        self._fail_taken(doomed, error)

    def _fail_taken(self, queued: list[Task], error: BaseException) -> None:
        """Fail tasks taken out of the queue; those their callers cancelled are counted now."""
        cancelled = sum(1 for task in queued if not fail(task, error, self._tally))
        if cancelled:
            with self._lock:
                self._tally.cancelled += cancelled

    # --- deadlines ------------------------------------------------------------

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
            self._drain(worker, running=task)
            if self._runs(worker, task):
                self._end_running(worker)
                fail(task, TaskTimeout(task.name, task.timeout, worker.pid), self._tally)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._escalate()
        if self._spawn_deadline is not None and now >= self._spawn_deadline:
            self._spawn_deadline = None
            self._spawn_missing()

    # --- worker lifecycle ---------------------------------------------------

    def _watch(self, fileobj: Any, index: dict[Any, WorkerHandle], worker: WorkerHandle) -> None:
        index[fileobj] = worker
        self._selector.register(fileobj, selectors.EVENT_READ)

    def _unwatch(self, fileobj: Any, index: dict[Any, WorkerHandle]) -> None:
        # Before the fd is closed: a closed fd cannot be taken out of epoll.
        if index.pop(fileobj, None) is not None:
            self._selector.unregister(fileobj)

    def _kill(self, worker: WorkerHandle) -> None:
        """SIGKILL the worker and every process its task started (tests replace it)."""
        _kill_tree_of(worker)

    def _live(self) -> int:
        return sum(1 for w in self._workers if not (w.stopping or w.doomed or w.unreachable))

    def _spawn_missing(self) -> None:
        if self._closing and not self._pending:
            return
        while self._broken is None and self._live() < self._max_workers:
            now = self._clock()
            while self._spawned_at and self._spawned_at[0] <= now - 1.0:
                self._spawned_at.popleft()
            if len(self._spawned_at) >= RESPAWNS_PER_SECOND * self._max_workers:
                self._spawn_deadline = self._spawned_at[0] + 1.0  # try again then
                return
            self._spawned_at.append(now)
            self._spawn()

    def _spawn(self) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker.main,
            args=(child_conn, self._init, self._log_level),
            name="pool-worker",
        )
        try:
            with signals_unblocked():  # a child inherits its starter's signal mask
                process.start()
        finally:
            child_conn.close()
        self.spawned += 1
        worker = WorkerHandle(process, parent_conn)
        worker.oom_kills = self._oom.count()
        self._workers.append(worker)
        self._watch(parent_conn, self._by_conn, worker)
        self._watch(process.sentinel, self._by_sentinel, worker)

    def _forget(self, worker: WorkerHandle) -> None:
        self._workers.remove(worker)
        self._unwatch(worker.conn, self._by_conn)
        self._unwatch(worker.process.sentinel, self._by_sentinel)
        worker.conn.close()
        try:
            worker.process.close()
        except ValueError:  # still running: leave it to the garbage collector
            pass
        kill_all(worker.children)

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

    def _reap_all(self) -> None:
        for worker in list(self._workers):
            if worker.process.exitcode is None:
                self._kill(worker)
            worker.process.join(5)
            self._forget(worker)

    def _close_wake_pipe(self) -> None:
        with self._lock:
            if self._wake_closed:
                return
            self._wake_closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)


def _waiting(task: Task) -> bool:
    """Queued and never started: not running (as one put back after its worker died), not ended."""
    return not (task.future.running() or task.future.done())


def _kill_tree_of(worker: WorkerHandle) -> None:
    pid = worker.pid
    if pid is not None and worker.process.exitcode is None:
        kill_tree(pid)


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


def _pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=5)
