"""`Pool`: the public facade. Validates, pickles in the caller, hands tasks over.

Everything a caller passes is checked and pickled here, in the caller's
thread, so a bad argument fails at the call that made it, with a message
that names it, and nothing is queued. The supervisor (`pool._supervisor`)
only ever sees bytes.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import logging
import math
import multiprocessing.context
import numbers
import os
import sys
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _protocol as proto
from ._errors import PoolClosed
from ._futures import Future
from ._mapping import WINDOW_PER_WORKER, ChunkedResults, Chunker, length_of, static_chunksize
from ._memory import parse_size
from ._progress import progress_bar
from ._segments import Segment
from ._serialize import describe_callable, dumps_arguments, dumps_call, dumps_function, dumps_items
from ._start import resolve_context
from ._supervisor import Supervisor
from ._workers import Task, available_cpus

if TYPE_CHECKING:
    from ._stats import PoolStats


__all__ = ["Pool", "PoolView"]

P = ParamSpec("P")
R = TypeVar("R")

_INHERIT: Any = object()

# Supervisors still running, shut down (and waited for) at interpreter exit
# as ProcessPoolExecutor does, so a script that never calls shutdown still
# gets its results and leaves no process behind.
_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()


def _shutdown_at_exit() -> None:
    # Leaving on an uncaught Ctrl-C: the user wants out, not the queue drained.
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for supervisor in list(_live):
        if interrupted:
            supervisor.abort()
        else:
            supervisor.shutdown(cancel_futures=False)
    for supervisor in list(_live):
        supervisor.join()


# threading's exit hooks run before any atexit handler, so our workers are
# stopped before multiprocessing's own atexit handler joins every child
# process (it would wait forever on a worker nobody told to stop), whatever
# the order in which the modules were imported. ProcessPoolExecutor does
# the same.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_shutdown_at_exit)
else:  # pragma: no cover  # every supported Python has it
    atexit.register(_shutdown_at_exit)


def _check_timeout(name: str, value: object, *, zero: bool = False) -> float | None:
    """Seconds or None; ``zero`` allows 0 (a wait that only looks, as in Executor.map)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__qualname__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large: {value!r}") from None
    if not (seconds >= 0 if zero else seconds > 0):  # also rejects NaN
        raise ValueError(f"{name} must be {'>=' if zero else '>'} 0 seconds, got {value!r}")
    if math.isinf(seconds):
        return None  # forever: the same as no timeout
    return seconds


def _check_count(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__qualname__}")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return number


def _check_progress(progress: object) -> None:
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, not {type(progress).__qualname__}")


def _check_callable(fn: object, what: str = "fn") -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__qualname__}")


class _FunctionTable:
    """Caller-side cache of pickled functions, so each is pickled once.

    Only plain functions are cached, by identity: their code does not change
    between calls. Other callables (partials, bound methods, objects with
    ``__call__``) carry state the caller may change, so they are pickled
    with every task.
    """

    SIZE = 256  # functions remembered; a miss costs one cloudpickle.dumps

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[object, int, bytes, str]] = OrderedDict()
        self._ids = itertools.count()

    def lookup(self, fn: Callable[..., Any]) -> tuple[int | None, bytes, str]:
        """``fn``'s id in the workers' caches (None if it is not cached), its bytes and its name."""
        if not _cacheable(fn):
            return None, dumps_function(fn), describe_callable(fn)
        key = id(fn)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is fn:
                self._entries.move_to_end(key)
                return entry[1], entry[2], entry[3]
        data = dumps_function(fn)
        name = describe_callable(fn)
        with self._lock:
            fn_id = next(self._ids)
            self._entries[key] = (fn, fn_id, data, name)  # holding fn keeps id(fn) unique
            if len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)
        return fn_id, data, name


def _cacheable(fn: object) -> bool:
    if isinstance(fn, types.FunctionType):
        return True
    # A builtin bound to an object (``d.get``) carries that object's state.
    return isinstance(fn, types.BuiltinFunctionType) and isinstance(
        getattr(fn, "__self__", None), (types.ModuleType, type(None))
    )


class _TaskAPI:
    """The calls shared by `Pool` and the views `Pool.options` returns."""

    _pool: Pool
    _timeout: float | None
    _retries: int

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in a worker; return its future.

        The arguments are pickled now: one that cannot be pickled raises
        `SerializationError` here, naming it, and nothing is queued.
        """
        _check_callable(fn)
        pool = self._pool
        fn_id, fn_bytes, name = pool._functions.lookup(fn)
        args_bytes, segment = dumps_call(name, args, kwargs)
        return pool._enqueue(
            name, proto.CALL, fn_id, fn_bytes, args_bytes, self._timeout, self._retries, segment
        )

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Like `Executor.map`, in input order, chunked automatically.

        A sized input (a list, a range) is submitted at once, as
        ProcessPoolExecutor does; any other iterable is read lazily with a
        bounded number of chunks in flight. ``timeout`` bounds the whole
        iteration, from this call. An explicit ``chunksize`` wins.
        ``progress=True`` shows a progress bar (tqdm) as results come.
        """
        _check_callable(fn)
        _check_progress(progress)
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        timeout = _check_timeout("timeout", timeout, zero=True)
        if chunksize is not None:
            chunksize = _check_count("chunksize", chunksize, 1, sys.maxsize)
        workers = self._pool._max_workers
        total = length_of(iterables)
        if total is not None:
            chunker = Chunker(chunksize or static_chunksize(total, workers), total, workers)
            window = None
        else:
            chunker = Chunker(chunksize, None, workers)
            window = WINDOW_PER_WORKER * workers
        if len(iterables) == 1:
            results = self._chunked(fn, iter(iterables[0]), proto.MAP_CHUNK, chunker, window, True, timeout)
        else:
            # zip stops at the shortest input, as the builtin map does.
            items = zip(*iterables)  # noqa: B905
            results = self._chunked(fn, items, proto.STARMAP_CHUNK, chunker, window, True, timeout)
        return progress_bar(results, total) if progress else results

    def imap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Lazily map ``fn`` over ``iterable``; results in input order (``progress``: a bar)."""
        return self._lazy(fn, iterable, proto.MAP_CHUNK, chunksize, True, progress)

    def imap_unordered(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Lazily map ``fn`` over ``iterable``; results as soon as they are ready."""
        return self._lazy(fn, iterable, proto.MAP_CHUNK, chunksize, False, progress)

    def starmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        *,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Lazily call ``fn(*args)`` for each ``args`` in ``iterable``; in input order."""
        return self._lazy(fn, iterable, proto.STARMAP_CHUNK, chunksize, True, progress)

    def options(self, *, timeout: float | None = _INHERIT, retries: int = _INHERIT) -> PoolView:
        """A view of the pool whose calls use these per-task options.

        ``timeout``: seconds a task may *run* (from when it starts, not from
        submit); past it, its worker and the worker's children are killed and
        the future fails with `TaskTimeout`. ``retries``: how many times a
        task whose worker died is run again before it fails with
        `WorkerLost`; a task that raised is never re-run. Options given here
        do not collide with the keyword arguments of your function.
        """
        return PoolView(
            self._pool,
            self._timeout if timeout is _INHERIT else _check_timeout("timeout", timeout),
            self._retries if retries is _INHERIT else _check_count("retries", retries, 0),
        )

    def _lazy(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        kind: int,
        chunksize: int | None,
        ordered: bool,
        progress: bool,
    ) -> Iterator[Any]:
        _check_callable(fn)
        _check_progress(progress)
        if chunksize is not None:
            chunksize = _check_count("chunksize", chunksize, 1, sys.maxsize)
        items = iter(iterable)  # a TypeError for a non-iterable, here
        workers = self._pool._max_workers
        total = length_of((iterable,))
        chunker = Chunker(chunksize, total, workers)
        results = self._chunked(fn, items, kind, chunker, WINDOW_PER_WORKER * workers, ordered, None)
        return progress_bar(results, total) if progress else results

    def _chunked(
        self,
        fn: Callable[..., Any],
        items: Iterator[Any],
        kind: int,
        chunker: Chunker,
        window: int | None,
        ordered: bool,
        timeout: float | None,
    ) -> Iterator[Any]:
        pool = self._pool
        pool._check_open()
        fn_id, fn_bytes, name = pool._functions.lookup(fn)
        task_timeout, retries = self._timeout, self._retries

        def submit_chunk(chunk: list[Any], first: int) -> Future[Any]:
            args_bytes, segment = dumps_items(name, first, chunk)
            return pool._enqueue(name, kind, fn_id, fn_bytes, args_bytes, task_timeout, retries, segment)

        chunks = ChunkedResults(submit_chunk, items, chunker, window, ordered, timeout).chunks()
        return itertools.chain.from_iterable(chunks)


class PoolView(_TaskAPI):
    """`Pool`'s calls with per-task options; made by `Pool.options`."""

    __module__ = "pool"

    def __init__(self, pool: Pool, timeout: float | None, retries: int) -> None:
        self._pool = pool
        self._timeout = timeout
        self._retries = retries

    def __repr__(self) -> str:
        return f"<pool.PoolView of {self._pool!r} timeout={self._timeout} retries={self._retries}>"


class Pool(_TaskAPI, Executor):
    """A process pool that survives its workers; a drop-in `ProcessPoolExecutor`.

    ``max_workers`` processes run the tasks (default: the CPUs this process
    may use). ``mp_context`` is a multiprocessing context or a start method
    name; the default is a thread-safe one (pool's own fork server, see
    `pool._start`; spawn where processes cannot pass descriptors). Each worker
    runs ``initializer(*initargs)`` first, and is replaced after
    ``max_tasks_per_child`` tasks, or once it (with its children) uses more
    than ``max_memory_per_child`` (bytes, or a string such as ``"512MB"``),
    measured between tasks. ``task_timeout`` and ``retries`` are the
    defaults of `options`.

    Records logged in workers reach this process's ``logging`` handlers,
    with the worker's pid (``record.process``) and the task's name
    (``record.task``); the workers log at the root level this process has
    when the pool is made.
    """

    __module__ = "pool"

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | str | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
    ) -> None:
        if max_workers is None:
            max_workers = available_cpus()
        self._max_workers = _check_count("max_workers", max_workers, 1)
        context = resolve_context(mp_context)
        init: tuple[bytes, bytes] | None = None
        if initializer is not None:
            _check_callable(initializer, "initializer")
            if not isinstance(initargs, tuple):
                raise TypeError(f"initargs must be a tuple, not {type(initargs).__qualname__}")
            name = describe_callable(initializer)
            init = (dumps_function(initializer), dumps_arguments(name, initargs, {}))
        if max_tasks_per_child is not None:
            max_tasks_per_child = _check_count("max_tasks_per_child", max_tasks_per_child, 1)
        memory_limit = None
        if max_memory_per_child is not None:
            memory_limit = parse_size("max_memory_per_child", max_memory_per_child)
        self._pool = self
        self._timeout = _check_timeout("task_timeout", task_timeout)
        self._retries = _check_count("retries", retries, 0)
        self._functions = _FunctionTable()
        self._ids = itertools.count()
        self._pid = os.getpid()
        self._supervisor = Supervisor(
            max_workers=self._max_workers,
            context=context,
            init=init,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=memory_limit,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        self._closed = False
        _live.add(self._supervisor)
        # A pool dropped without shutdown still finishes its work and stops
        # its workers; the finalizer must not hold the pool itself.
        weakref.finalize(self, self._supervisor.shutdown, False)

    @property
    def max_workers(self) -> int:
        """The number of worker processes."""
        return self._max_workers

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work, finish (or cancel) what is queued, stop the workers.

        Each worker gets the stop sentinel; one still there after a grace
        period is terminated, then killed. Every future ends in a result, an
        error or cancelled, also with ``wait=False`` (the supervisor finishes
        in the background).
        """
        self._closed = True
        self._supervisor.shutdown(cancel_futures)
        if wait:
            self._supervisor.join()

    def cancel(self, future: concurrent.futures.Future[Any]) -> bool:
        """Cancel a task, also one that is already running.

        A queued task is cancelled as by ``future.cancel()``. A running one is
        stopped: its worker and every process it started are killed, and a
        fresh worker takes its place. Either way the future ends cancelled
        (``result()`` raises `CancelledError`) and True is returned; False if
        the task had already finished.
        """
        if not isinstance(future, Future):
            raise TypeError(f"cancel() takes a future this pool returned, not {type(future).__qualname__}")
        if future.cancel():
            return True
        if future.done():
            return future.cancelled()
        return self._supervisor.stop_task(future)

    def stats(self) -> PoolStats:
        """What the pool has done so far and what each worker is doing now.

        Counts of tasks (submitted, queued, running, done, failed by cause,
        cancelled, retried), of workers started to replace others, and per
        worker its pid, state, current task, tasks done, memory and CPU
        time; see `PoolStats` and `WorkerStats`. After shutdown the counts
        stay and ``workers`` is empty.
        """
        return self._supervisor.stats()

    def pending(self) -> list[Future[Any]]:
        """The futures of the tasks queued and not started yet, oldest first.

        A task put back to run again after its worker died counts as
        started: it is not listed (nor cancelled by `clear`).
        """
        return self._supervisor.pending()

    def clear(self) -> int:
        """Cancel every queued task that has not started; return how many were cancelled.

        Running tasks are left alone. Waiters in ``wait`` and
        ``as_completed`` hear of the cancels at once.
        """
        return self._supervisor.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: cancel what waits, stop what runs, leave nothing behind.
            self._closed = True
            self._supervisor.abort()
            self._supervisor.join()
            return None
        return super().__exit__(exc_type, exc, tb)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("cannot submit: the pool was shut down")
        if os.getpid() != self._pid:
            raise PoolClosed(f"this pool belongs to process {self._pid}; a forked child cannot use it")

    def _enqueue(
        self,
        name: str,
        kind: int,
        fn_id: int | None,
        fn_bytes: bytes,
        args_bytes: bytes,
        timeout: float | None,
        retries: int,
        segment: Segment | None = None,
    ) -> Future[Any]:
        self._check_open()
        future: Future[Any] = Future()
        task = Task(
            next(self._ids), future, name, kind, fn_id, fn_bytes, args_bytes, timeout, retries, segment
        )
        self._supervisor.submit(task)
        return future

    def __repr__(self) -> str:
        state = "shut down" if self._closed else "running"
        return f"<pool.Pool max_workers={self._max_workers} {state}>"
