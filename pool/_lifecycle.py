"""The life of the worker processes: started, retired, killed, dead, reaped.

Part of `Supervisor` (see the diagram in `pool._supervisor`), run only by
its thread, on the state `Supervisor.__init__` sets up. It owns the
process side of a worker: starting workers as slots fall empty (paced, so a
pool whose workers keep dying does not spin), watching their pipes and
sentinels in the selector, retiring one that is due (``max_tasks_per_child``,
``max_memory_per_child``), killing one with its task's processes, and
handling a death: blame its running task (retry it or fail it with
`WorkerLost`), requeue those that never started, and count workers that die
before they are ready, breaking the pool when starting keeps failing.

Apart because starting and ending processes is a job with failure modes of
its own (a start that fails, a kill that races an exit, an OOM kill to
explain), and the rest of the supervisor needs only a few calls of it
(`_spawn_missing`, `_retire`, `_kill`, `_end_running`, `_on_exit`,
`_reap_all`). How the pool's end asks workers to leave and escalates (the
stop sentinel, SIGTERM, SIGKILL) stays with the main loop in
`pool._supervisor`, with its graces.
"""

from __future__ import annotations

import logging
import multiprocessing.context
import selectors
import signal
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _worker
from ._errors import describe_exit
from ._memory import OomWatch, tree_rss
from ._outcomes import fail
from ._processes import kill_all, kill_tree, signals_unblocked
from ._tally import Tally
from ._workers import Task, WorkerHandle

logger = logging.getLogger("pool")

# After this many workers in a row die before they are ready (a failing
# initializer, an import error), the pool stops respawning and fails pending
# work. Higher tolerates a flaky initializer longer; lower gives up sooner on a
# transient failure.
MAX_START_FAILURES = 3

# Respawns allowed per second, per worker slot: a pool whose workers keep
# dying (a poison task with many retries, an outside killer) starts new ones
# at this pace at most instead of spinning.
RESPAWNS_PER_SECOND = 4


class WorkerLifecycle:
    """The workers' life, as part of `Supervisor`; see the module docstring."""

    # The supervisor's state this part reads or writes: set up in
    # `Supervisor.__init__` (the selector in `Supervisor._main`), owned by its thread.
    _max_workers: int
    _context: multiprocessing.context.BaseContext
    _init: tuple[bytes, bytes] | None
    _max_memory: int | None
    _log_level: int
    _clock: Callable[[], float]
    _oom: OomWatch
    _lock: threading.Lock
    _pending: deque[Task]
    _closing: bool
    _aborting: bool
    _broken: BaseException | None
    _tally: Tally
    _selector: selectors.BaseSelector
    _workers: list[WorkerHandle]
    _by_conn: dict[Any, WorkerHandle]
    _by_sentinel: dict[int, WorkerHandle]
    _start_failures: int
    _spawned_at: deque[float]
    spawned: int
    _spawn_deadline: float | None

    if TYPE_CHECKING:  # defined by the other parts of Supervisor

        def _send_stop(self, worker: WorkerHandle) -> None: ...
        def _drain(self, worker: WorkerHandle) -> None: ...
        def _cancel_taken(self, task: Task) -> bool: ...

    # --- starting ----------------------------------------------------------

    def _live(self) -> int:
        return sum(1 for w in self._workers if not (w.stopping or w.doomed or w.unreachable))

    def _spawn_missing(self) -> None:
        """Start one missing worker, and have the next started as soon as events are seen to.

        One at a time: each start waits a round trip to the fork server, and
        a pool of many workers would otherwise serve nothing until the last
        of them had started. So the first ready worker gets work at once.
        """
        if self._closing and not self._pending:
            return
        if self._broken is not None or self._live() >= self._max_workers:
            return
        now = self._clock()
        while self._spawned_at and self._spawned_at[0] <= now - 1.0:
            self._spawned_at.popleft()
        if len(self._spawned_at) >= RESPAWNS_PER_SECOND * self._max_workers:
            self._spawn_deadline = self._spawned_at[0] + 1.0  # try again then
            return
        self._spawned_at.append(now)
        if self._spawn() and self._live() < self._max_workers:
            self._spawn_deadline = now  # the wait for events returns at once

    def _spawn(self) -> bool:
        """Start one worker; False if it could not be started (tried again later)."""
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker.main,
            args=(child_conn, self._init, self._log_level),
            name="pool-worker",
        )
        try:
            with signals_unblocked():  # a child inherits its starter's signal mask
                process.start()
        except (OSError, EOFError) as exc:  # no process, no descriptor, a fork server gone
            parent_conn.close()
            self._on_spawn_error(exc)
            return False
        finally:
            child_conn.close()
        self.spawned += 1
        worker = WorkerHandle(process, parent_conn)
        worker.oom_kills = self._oom.count()
        self._workers.append(worker)
        self._watch(parent_conn, self._by_conn, worker)
        self._watch(process.sentinel, self._by_sentinel, worker)
        return True

    def _on_spawn_error(self, exc: BaseException) -> None:
        self._start_failures += 1
        logger.warning("could not start a worker: %s: %s", type(exc).__name__, exc)
        if self._start_failures >= MAX_START_FAILURES and not any(w.usable() for w in self._workers):
            from ._broken import InitializerFailed  # loaded already: see Supervisor._load_modules

            error = InitializerFailed(
                f"workers could not be started {self._start_failures} times in a row: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            self._break(error)
            return
        # Not sooner, even if a start was due at once: a fork server down
        # for a moment must not use up the failures allowed in a row.
        self._spawn_deadline = self._clock() + 1.0 / RESPAWNS_PER_SECOND

    def _watch(self, fileobj: Any, index: dict[Any, WorkerHandle], worker: WorkerHandle) -> None:
        index[fileobj] = worker
        self._selector.register(fileobj, selectors.EVENT_READ)

    def _unwatch(self, fileobj: Any, index: dict[Any, WorkerHandle]) -> None:
        # Before the fd is closed: a closed fd cannot be taken out of epoll.
        if index.pop(fileobj, None) is not None:
            try:
                self._selector.unregister(fileobj)
            except KeyError:
                pass  # a caller reading it directly took it out (`pool._direct`)

    # --- retiring and killing ----------------------------------------------

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

    def _kill(self, worker: WorkerHandle) -> None:
        """SIGKILL the worker and every process its task started (tests replace it)."""
        _kill_tree_of(worker)

    def _end_running(self, worker: WorkerHandle) -> Task:
        """Kill the worker (and what its task started) to end its running task."""
        task = worker.outstanding.popleft()
        worker.doomed = True
        self._kill(worker)
        return task

    def _drop_conn(self, worker: WorkerHandle) -> None:
        """The pipe closed or broke: the worker is gone or useless; end it."""
        self._unwatch(worker.conn, self._by_conn)
        if not worker.stopping:
            self._kill(worker)

    # --- deaths ------------------------------------------------------------

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
        from ._broken import WorkerLost  # loaded already: see Supervisor._load_modules

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
        from ._broken import InitializerFailed  # loaded already: see Supervisor._load_modules

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

    # --- reaping -----------------------------------------------------------

    def _forget(self, worker: WorkerHandle) -> None:
        self._workers.remove(worker)
        self._unwatch(worker.conn, self._by_conn)
        self._unwatch(worker.process.sentinel, self._by_sentinel)
        worker.conn.close()
        worker.sock.close()
        worker.reader.close()
        try:
            worker.process.close()
        except ValueError:  # still running: leave it to the garbage collector
            pass
        kill_all(worker.children)

    def _reap_all(self) -> None:
        for worker in list(self._workers):
            if worker.process.exitcode is None:
                self._kill(worker)
            worker.process.join(5)
            self._forget(worker)


def _kill_tree_of(worker: WorkerHandle) -> None:
    pid = worker.pid
    if pid is not None and worker.process.exitcode is None:
        kill_tree(pid)
