"""The worker process: receive tasks over its Pipe, run them, send events back.

This module is what runs in the child. It imports little, so a worker is
quick to start, and it keeps its own promises:

* SIGINT is ignored: Ctrl-C is the caller's to handle, and the supervisor
  decides when workers stop.
* ``faulthandler`` is on, so a segfault leaves a C-level trace on stderr.
* A watchdog thread waits on the parent's sentinel. When the parent dies,
  even by SIGKILL and even while a task is running, the worker kills the
  processes the task started and exits at once.
* A result, or an exception, is pickled inside the task's ``try``: if it
  cannot be pickled the task fails with a clear error and the worker lives.
* ``logging`` records go to the caller's handlers (`pool._worker_logs`); what a
  task prints is line-buffered, so a worker killed later does not take it.
"""

from __future__ import annotations

import faulthandler
import io
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from . import _protocol as proto
from . import _zygote
from ._errors import SerializationError
from ._frames import frame_header, send_with_fds
from ._import_hooks import when_imported
from ._segments import Segment, close_inherited, loads_out_of_band, receive_segments, socket_of
from ._serialize import describe_callable, drop_frames_of, dumps_exception, dumps_result, loads
from ._spin import spin

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    import multiprocessing.connection
    from typing import Any

    from ._frames import Channel

# logging.WARNING, the level a worker logs at unless told: logging itself is
# imported only when something in the worker uses it.
WARNING = 30
# Exit status of a worker whose parent vanished; nobody reads it but `ps`.
PARENT_DIED_EXIT = 70
INIT_FAILED_EXIT = 71


def _kill_children_and_exit(status: int) -> None:
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
    finally:
        os._exit(status)


def _parent_sentinel() -> int | None:
    """A descriptor readable once the pool's process is gone, however this worker started."""
    if _zygote.parent_sentinel is not None:
        return _zygote.parent_sentinel
    import multiprocessing  # started by multiprocessing itself: loaded already

    parent = multiprocessing.parent_process()
    return None if parent is None else parent.sentinel


def _watch_parent() -> None:
    sentinel = _parent_sentinel()
    if sentinel is None:
        return
    if hasattr(select, "poll"):  # not select: the descriptor's number may pass 1023
        poller = select.poll()
        poller.register(sentinel, select.POLLIN)
        poller.poll()
    else:
        import multiprocessing.connection

        multiprocessing.connection.wait([sentinel])
    _kill_children_and_exit(PARENT_DIED_EXIT)


class _BrokenFunction:
    """Stands in the cache for a function whose bytes would not unpickle.

    The supervisor believes the worker holds the function (see `LruKeys`), so
    later tasks for it arrive without bytes; they fail with the same error.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def _run(fn: Callable[..., Any], kind: int, args: Any) -> Any:
    if kind == proto.CALL:
        return fn(*args[0], **args[1])
    return _run_chunk(fn, kind == proto.STARMAP_CHUNK, args)


def _load_arguments(args_bytes: bytes, segment: Segment | None) -> Any:
    if segment is None:
        return loads(args_bytes)
    try:
        return loads_out_of_band(args_bytes, segment.layout, segment.fd)
    finally:
        segment.close()  # what it mapped outlives the descriptor


def _run_chunk(fn: Callable[..., Any], star: bool, items: list[Any]) -> tuple[list[Any], bytes | None, float]:
    start = time.perf_counter()
    results = []
    try:
        if star:
            for item in items:
                results.append(fn(*item))
        else:
            for item in items:
                results.append(fn(item))
    except BaseException as exc:  # noqa: BLE001  # the caller raises it at this item's place
        return results, dumps_exception(_strip_own_frames(exc)), time.perf_counter() - start
    return results, None, time.perf_counter() - start


def _strip_own_frames(exc: BaseException) -> BaseException:
    """Drop this module's frames so the remote traceback starts in the user's code."""
    return drop_frames_of(__file__, exc)


def _failure(task_id: int, exc: BaseException) -> bytes:
    return pickle.dumps((proto.TASK_FAILED, task_id, dumps_exception(_strip_own_frames(exc))), protocol=5)


class _Functions:
    """The worker's end of the function cache described in `pool._protocol`."""

    def __init__(self) -> None:
        self._by_id: dict[int, Callable[..., Any]] = {}
        self._order: proto.LruKeys = proto.LruKeys()

    def get(self, fn_id: int | None, fn_bytes: bytes | None) -> Callable[..., Any]:
        fn: Callable[..., Any]
        if fn_bytes is not None:
            try:
                fn = loads(fn_bytes)
            except BaseException as exc:  # noqa: BLE001  # reported as the task's failure
                fn = _BrokenFunction(exc)
            if fn_id is not None:
                self._by_id[fn_id] = fn
        else:
            assert fn_id is not None  # the supervisor sends bytes with every uncached call
            fn = self._by_id[fn_id]
        if fn_id is not None:
            evicted = self._order.touch(fn_id)
            if evicted is not None:
                del self._by_id[evicted]
        return fn


def _execute(
    fn: Callable[..., Any],
    task_id: int,
    kind: int,
    args_bytes: bytes,
    segment: Segment | None,
    held: list[Any],
) -> tuple[bytes, Segment | None]:
    """Run one task; return the event to send, and its result's big buffers. Never raises.

    With shared memory, the arguments and the result go into ``held``, for
    the caller to drop once the event is sent: unmapping 64 MiB takes
    milliseconds, better spent after the result left than before.
    """
    try:
        args = _load_arguments(args_bytes, segment)
        if segment is not None:
            held.append(args)
        result = _run(fn, kind, args)
        del args
    except BaseException as exc:  # noqa: BLE001  # SystemExit and KeyboardInterrupt fail the task only
        return _failure(task_id, exc), None
    try:
        data, out = dumps_result(result)
    except BaseException as exc:  # noqa: BLE001  # an unpicklable result fails the task only
        error = SerializationError(
            f"cannot pickle the result of {describe_callable(fn)}, "
            f"of type {type(result).__qualname__}: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return _failure(task_id, error), None
    if out is not None:
        held.append(result)
    layout = None if out is None else out.layout
    return pickle.dumps((proto.TASK_DONE, task_id, data, layout), protocol=5), out


def _initialize(sender: _Sender, init: tuple[bytes, bytes]) -> None:
    try:
        initializer = loads(init[0])
        initargs, _ = loads(init[1])
        initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001  # SystemExit in an initializer is a failure too
        sender.send(pickle.dumps((proto.INIT_FAILED, dumps_exception(exc)), protocol=5))
        sys.exit(INIT_FAILED_EXIT)


class _Sender:
    """The worker's one way to write to its Pipe, safe from any thread.

    Task threads may log while the main thread sends a result; two writers
    without the lock would interleave their bytes. A result's shared memory
    is passed attached to the message that names it.
    """

    def __init__(self, conn: multiprocessing.connection.Connection | Channel) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def send(self, data: bytes, segment: Segment | None = None) -> None:
        try:
            with self._lock:
                if segment is None:
                    self._conn.send_bytes(data)
                else:
                    self._send_attached(data, segment.fd)
        except OSError:  # the supervisor is gone
            _kill_children_and_exit(PARENT_DIED_EXIT)
        finally:
            if segment is not None:
                segment.close()  # the supervisor holds it now

    def _send_attached(self, data: bytes, fd: int) -> None:
        """One frame as ``send_bytes`` makes it, the descriptor attached (see `pool._frames`)."""
        send_with_fds(self.socket(), frame_header(len(data)) + data, [fd])

    def socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket_of(self._conn)
        return self._sock


# The name of the task running now, put on the log records it emits.
_current_task: str | None = None


def _set_up_output(sender: _Sender, log_level: int) -> None:
    when_imported("logging", lambda _: _forward_logs(sender, log_level))
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def _forward_logs(sender: _Sender, log_level: int) -> None:
    from ._worker_logs import forward_records

    forward_records(sender.send, log_level, lambda: _current_task)


def main(
    conn: multiprocessing.connection.Connection | Channel,
    init: tuple[bytes, bytes] | None,
    log_level: int = WARNING,
) -> None:
    """The worker's life: initialize, announce, serve until the sentinel."""
    global _current_task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited()  # under fork: the parent's queued tasks' shared memory
    faulthandler.enable()
    threading.Thread(target=_watch_parent, name="pool-parent-watchdog", daemon=True).start()
    sender = _Sender(conn)
    _set_up_output(sender, log_level)
    if init is not None:
        _initialize(sender, init)
        del init

    sender.send(pickle.dumps((proto.WORKER_READY, os.getpid()), protocol=5))
    functions = _Functions()
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    while True:
        try:
            message = loads(conn.recv_bytes())
        except (EOFError, OSError):
            _kill_children_and_exit(PARENT_DIED_EXIT)
        if message is proto.STOP:
            break
        _, entries, spinning = message
        segments = _receive_segments(sender, entries)
        for task_id, kind, fn_id, fn_bytes, args_bytes, layout in entries:
            # The reply is built and sent before the next task starts: see
            # _protocol on why this order is what blames a crash correctly.
            segment = None
            if layout is not None:
                segment = segments.pop(0)
                segment.layout = layout
            fn = functions.get(fn_id, fn_bytes)
            _current_task = describe_callable(fn)
            held: list[Any] = []
            reply, out = _execute(fn, task_id, kind, args_bytes, segment, held)
            _current_task = None
            del fn, segment
            sender.send(reply, out)
            del reply, out, held
            _flush_output()
        if spinning:
            spin(poller, spinning)  # the next task is due soon: see pool._spin
    conn.close()


def _receive_segments(sender: _Sender, entries: list[Any]) -> list[Segment]:
    """The shared memory passed right behind a batch of tasks, one per task that has some."""
    count = sum(1 for entry in entries if entry[5] is not None)
    if not count:
        return []
    try:
        return receive_segments(sender.socket(), count)
    except (EOFError, OSError):
        _kill_children_and_exit(PARENT_DIED_EXIT)
        raise  # not reached


def _flush_output() -> None:
    # Output a task printed reaches the terminal now, not when the buffer
    # fills: a worker killed later must not take it with it.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
