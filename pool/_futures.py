"""The future `Pool.submit` returns: a `concurrent.futures.Future` you can await."""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._direct import Direct
    from ._workers import WorkerHandle

T = TypeVar("T")

__all__ = ["Future"]


class Future(concurrent.futures.Future[T]):
    """A `concurrent.futures.Future` that is also awaitable.

    ``await pool.submit(fn, x)`` works inside a running event loop; the
    result is delivered to the loop thread-safely by `asyncio.wrap_future`.
    Everything that accepts a `concurrent.futures.Future` (``wait``,
    ``as_completed``, ``run_in_executor`` callers) accepts this one.
    """

    __module__ = "pool"

    def __init__(self) -> None:
        # As concurrent.futures.Future.__init__ (a test checks they set the
        # same attributes), with a lighter condition: see _Condition.
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[T]], object]] = []

    # Set when the pool sent this future's task straight to an idle worker
    # from the caller's thread: a thread that waits for it may then read the
    # reply itself (see `pool._direct`). Cleared as the future ends.
    _direct: tuple[Direct, WorkerHandle] | None = None
    # While a thread delivers this future's result that way, its done
    # callbacks wait until that thread has handed the worker back; then the
    # supervisor's thread runs them, as it runs all others.
    _holding = False
    _held = False

    def result(self, timeout: float | None = None) -> T:
        return super().result(self._read_directly(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._read_directly(timeout))

    def _read_directly(self, timeout: float | None) -> float | None:
        """Read the reply in this thread if the pool allows it now; what is left of ``timeout``."""
        direct = self._direct
        if direct is not None and self._state == RUNNING:
            return direct[0].receive_direct(self, direct[1], timeout)
        return timeout

    def _invoke_callbacks(self) -> None:
        self._direct = None
        with self._condition:  # against `_release_callbacks` in the reading thread
            if self._holding:
                self._held = True
                return
        super()._invoke_callbacks()  # type: ignore[misc]

    def _hold_callbacks(self) -> None:
        """Keep done callbacks from running until `_release_callbacks` (see `pool._direct`)."""
        with self._condition:
            self._holding = True

    def _release_callbacks(self) -> bool:
        """Stop holding them; True if the future ended meanwhile and they are yet to run."""
        with self._condition:
            self._holding = False
            held, self._held = self._held, False
            return held and bool(self._done_callbacks)

    def _run_callbacks(self) -> None:
        super()._invoke_callbacks()  # type: ignore[misc]

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[T]], object]) -> None:
        """As `concurrent.futures.Future.add_done_callback`; while held, it waits its turn too."""
        with self._condition:
            if self._holding:
                self._done_callbacks.append(fn)
                return
        super().add_done_callback(fn)

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # here: workers and scripts without asyncio skip its import

        return asyncio.wrap_future(self).__await__()

    def cancel(self) -> bool:
        """As `concurrent.futures.Future.cancel`, and waiters hear of it at once.

        The base class tells ``wait`` and ``as_completed`` of a cancel only
        when the executor next looks at the task; a task queued behind hours
        of work would keep them waiting that long.
        """
        if not super().cancel():
            return False
        with self._condition:
            if self._state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
        return True

    def _start(self) -> bool:
        """Mark running for the supervisor; False (and no change) if cancelled.

        Unlike ``set_running_or_notify_cancel``, it may be called on a future
        already running (a task run again after its worker died) and on one
        already cancelled, atomically with a concurrent ``cancel``.
        """
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING
                return True
            return self._state == RUNNING

    def _cancel_running(self) -> bool:
        """Cancel even though the task started: the pool stopped it.

        ``Future.cancel`` refuses a running future because an executor
        cannot stop a running call; this pool can (it kills the worker), so
        it ends the future exactly as ``cancel`` would have: ``cancelled()``
        is true, ``result()`` raises `CancelledError`, waiters in ``wait``
        and ``as_completed`` and done callbacks are told. This mirrors the
        body of ``Future.cancel`` and ``set_running_or_notify_cancel``.
        """
        with self._condition:
            if self._state == FINISHED or self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return self._state != FINISHED
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True


class _Condition(threading.Condition):
    """A `threading.Condition` over its own RLock that binds no method to each instance.

    The base class copies five of its lock's methods onto every instance:
    five more objects for the cyclic garbage collector to track and visit,
    for each future. With 20,000 futures held, collections took a third of
    the time of submitting and awaiting them. Here they are methods.
    """

    def __init__(self) -> None:  # not the base's, which binds them
        self._lock = threading.RLock()
        self._waiters: deque[Any] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]
