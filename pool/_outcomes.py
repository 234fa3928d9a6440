"""How a task's future ends: a result, an error, a cancel. Never raising here.

These run in the supervisor thread, or in a caller's reading its own reply
(see `pool._direct`). Unpickling a result or rebuilding an exception runs
the user's code (``__reduce__``, ``__setstate__``); whatever that code does
fails the one task, never the thread that serves them all. One exception:
a KeyboardInterrupt in the main thread is Ctrl-C, the user's, and goes on.

Each function that ends a future with a result or an error counts it in the
pool's `Tally`, there and only there, so a task is counted once, as its
future ends: just before, so a done callback that asks for `Pool.stats`
finds its own task counted. Cancels are counted by the supervisor instead
(see `pool._supervisor`), since callers' threads cancel too.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ._errors import SerializationError
from ._segments import Segment, loads_out_of_band
from ._serialize import add_note, loads, loads_exception
from ._tally import Tally
from ._workers import Task


def deliver_result(task: Task, payload: bytes, tally: Tally, segment: Segment | None = None) -> None:
    """Unpickle a worker's result (its big buffers in ``segment``) into the task's future."""
    if task.future.done():
        if segment is not None:
            segment.close()
        return  # stopped by the caller meanwhile; the result is dropped
    try:
        if segment is None:
            value = loads(payload)
        else:
            try:
                value = loads_out_of_band(payload, segment.layout, segment.fd)
            finally:
                segment.close()
    except BaseException as exc:  # any unpickling failure fails the task only
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise  # Ctrl-C in a caller reading its own reply (see pool._direct): the user's, not the task's
        error = SerializationError(
            f"cannot unpickle the result of {task.name}: {type(exc).__name__}: {_describe(exc)}"
        )
        error.__cause__ = exc
        tally.fail(error)
        task.future.set_exception(error)
    else:
        tally.done += 1
        task.future.set_result(value)


def deliver_error(task: Task, payload: bytes, pid: int | None, tally: Tally) -> None:
    """Rebuild the exception a task raised in worker ``pid`` into its future."""
    if task.future.done():
        return
    # Rebuilding runs the exception's own code here; whatever it does
    # (raise, even SystemExit) fails this task, never this thread.
    exc = loads_exception(payload)
    try:
        add_note(exc, f"raised in worker pid {pid} while running {task.name}")
    except BaseException:  # noqa: BLE001  # odd __notes__: the exception goes without the note
        pass
    tally.fail(exc)
    task.future.set_exception(exc)


def cancel(task: Task) -> bool:
    """End the task's future cancelled, whether it waited or ran."""
    return task.future.cancel() or task.future._cancel_running()


def fail(task: Task, error: BaseException, tally: Tally) -> bool:
    """Fail the task's future with ``error``, unless it already ended; True if it did."""
    if task.future.done() or not task.future._start():
        return False
    tally.fail(error)
    task.future.set_exception(error)
    return True


def copy_error(error: BaseException) -> BaseException:
    """A fresh instance, so raising it again does not grow one traceback."""
    try:
        copy = type(error)(*error.args)
    except Exception:  # noqa: BLE001  # then the original will do
        return error
    copy.__cause__ = error.__cause__
    return copy


def log_record(data: dict[str, Any]) -> None:
    """Hand a worker's log record to the caller's handlers, as if logged here."""
    record = logging.makeLogRecord(data)
    logging.getLogger(record.name).handle(record)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001  # a broken __str__ must not hide the failure
        return f"<{type(exc).__qualname__}>"
