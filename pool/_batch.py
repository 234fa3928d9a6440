"""`batch`: run a function over a file (or iterable) of inputs, results and failures on disk.

Inputs stream through a one-stage `Pipeline` (``on_error="collect"``), so
each input fails alone: an exception, a worker that died, a timeout, a
result that is not JSON, a line that would not parse. The worker turns each
result into its JSON record itself; the caller's process only writes lines.
`pool._journal` makes the files resumable.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from . import _inputs
from ._broken import WorkerLost
from ._errors import SerializationError
from ._inputs import InputError, Item, format_of, input_json, items_of, open_input, read_items, run_input
from ._journal import RecordFiles, errors_path, record_line
from ._mapping import length_of
from ._pipeline import FailedItem, Pipeline, stage_name
from ._pool import _check_count, _check_timeout
from ._progress import PLAIN_INTERVAL, BatchProgress
from ._serialize import describe_callable, drop_frames_of
from ._task_timeout import TaskTimeout

__all__ = ["BatchResult", "batch", "execute"]

SLOWEST = 5  # inputs listed in the summary as the slowest
SYNC_EVERY = 1.0  # seconds between commits (fsync and journal), by default


@dataclass(frozen=True)
class _Options:
    workers: int
    timeout: float | None
    retries: int
    ordered: bool
    chunksize: int | None
    progress: bool
    progress_every: float
    sync_every: float
    mp_context: Any


@dataclass
class BatchResult:
    """What a batch job did; its ``summary()`` is what the command prints at the end."""

    __module__ = "pool"

    output: str
    errors: str
    done: int = 0  # inputs that got a result in this run
    failed: Counter[str] = field(default_factory=Counter)  # by error type
    skipped: int = 0  # inputs already done by an earlier run (resume)
    failed_before: int = 0  # of those, the ones that failed
    seconds: float = 0.0
    slowest: list[tuple[float, int]] = field(default_factory=list)  # (seconds, line)
    restarts: int = 0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """True when every input has a result (this run's and earlier ones') and nothing was interrupted."""
        return not self.failed and not self.failed_before and not self.interrupted

    def summary(self) -> str:
        finished = self.done + sum(self.failed.values())
        rate = finished / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{'interrupted' if self.interrupted else 'finished'} in {self.seconds:.1f} s: "
            f"{finished:,} inputs ({rate:,.0f}/s), {self.done:,} done, "
            f"{sum(self.failed.values()):,} failed"
            + (f", {self.skipped:,} already done before" if self.skipped else "")
            + (f" ({self.failed_before:,} of them failed)" if self.failed_before else "")
        ]
        for kind, count in self.failed.most_common():
            lines.append(f"  failed with {kind}: {count:,}")
        if self.slowest:
            slow = ", ".join(f"line {line} ({_seconds(seconds)})" for seconds, line in self.slowest)
            lines.append(f"  slowest: {slow}")
        if self.restarts:
            lines.append(f"  workers restarted: {self.restarts}")
        lines.append(f"  results: {self.output}")
        if self.failed or self.failed_before:
            lines.append(f"  failures: {self.errors}")
        if self.interrupted:
            lines.append("  rerun with --resume (resume=True) to finish the rest")
        return "\n".join(lines)


def batch(
    fn: Callable[..., Any],
    inputs: str | os.PathLike[str] | Iterable[Any],
    output: str | os.PathLike[str],
    *,
    errors: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    resume: bool = False,
    ordered: bool = False,
    chunksize: int | None = None,
    format: str | None = None,  # the command's --format
    progress: bool = True,
    progress_every: float = PLAIN_INTERVAL,
    sync_every: float = SYNC_EVERY,
    mp_context: Any = None,
) -> BatchResult:
    """Run ``fn`` over ``inputs`` in worker processes; write one JSON record per input.

    ``inputs`` is a file path (JSON Lines, CSV or text lines, by extension
    or ``format``) or an iterable of values, each passed as the one
    argument. Results go to ``output`` as ``{"line": N, "input": ...,
    "result": ...}``; failures to ``errors`` (default: next to ``output``,
    ending ``.errors.jsonl``) as ``{"line": N, "input": ..., "error":
    {"type", "message", "traceback"}}``. With ``resume=True`` a job that was
    interrupted (Ctrl-C, a kill, a crash) carries on where its files were
    last committed, and ends with the same records as an uninterrupted run.
    Returns a `BatchResult`; a Ctrl-C ends the run with the work so far
    committed and raises `KeyboardInterrupt`.
    """
    result = execute(
        fn,
        inputs,
        output,
        errors=errors,
        workers=workers,
        timeout=timeout,
        retries=retries,
        resume=resume,
        ordered=ordered,
        chunksize=chunksize,
        format=format,
        progress=progress,
        progress_every=progress_every,
        sync_every=sync_every,
        mp_context=mp_context,
    )
    if result.interrupted:
        raise KeyboardInterrupt
    return result


batch.__module__ = "pool"  # public as pool.batch


def execute(
    fn: Callable[..., Any],
    inputs: str | os.PathLike[str] | Iterable[Any],
    output: str | os.PathLike[str],
    *,
    errors: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    resume: bool = False,
    ordered: bool = False,
    chunksize: int | None = None,
    format: str | None = None,  # the command's --format
    progress: bool = True,
    progress_every: float = PLAIN_INTERVAL,
    sync_every: float = SYNC_EVERY,
    mp_context: Any = None,
) -> BatchResult:
    """`batch`, returning (not raising) when interrupted: the command prints the summary then."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
    output = os.fspath(output)
    errors = os.fspath(errors) if errors is not None else errors_path(output)
    if _same_file(errors, output):
        raise ValueError(f"the errors file must differ from the output file: {output}")
    workers = _check_count("workers", workers, 1) if workers is not None else os.cpu_count() or 1
    timeout = _check_timeout("timeout", timeout)
    retries = _check_count("retries", retries, 0)
    sync_every = float(sync_every)
    if not sync_every > 0:
        raise ValueError(f"sync_every must be > 0 seconds, got {sync_every!r}")
    if chunksize is not None:
        chunksize = _check_count("chunksize", chunksize, 1)
    stream: IO[bytes] | None = None
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        for written in (output, errors, output + ".journal"):
            if path != "-" and _same_file(path, written):
                raise ValueError(f"the input {path} would be overwritten: it is also {written}")
        fmt = format_of(path, format)
        stream = open_input(path)  # an OSError here names the file
        items, header_row = read_items(stream, fmt)
        # The total is for the progress display only: no extra pass over the file without one.
        total = _count_lines(path, fmt) if progress and path != "-" else None
        identity: dict[str, Any] | None = _identity(path)
    else:
        fmt = "values"
        items, header_row = items_of(inputs), None
        total = length_of((inputs,))
        identity = None
    header = {
        "journal": 1,
        "function": describe_callable(fn),
        "input": identity,
        "format": fmt,
        "output": os.path.abspath(output),
        "errors": os.path.abspath(errors),
    }
    options = _Options(
        workers=workers,
        timeout=timeout,
        retries=retries,
        ordered=bool(ordered),
        chunksize=chunksize,
        progress=bool(progress),
        progress_every=float(progress_every),
        sync_every=sync_every,
        mp_context=mp_context,
    )
    try:
        files = RecordFiles(output, errors, header, resume)
        try:
            return _run(fn, items, fmt, header_row, files, total, options)
        finally:
            files.close()
    finally:
        if stream is not None and stream is not sys.stdin.buffer:
            stream.close()


def _run(
    fn: Callable[..., Any],
    items: Iterator[Item],
    fmt: str,
    header: list[str] | None,
    files: RecordFiles,
    total: int | None,
    options: _Options,
) -> BatchResult:
    result = BatchResult(files.output, files.errors)
    done_before = files.resumed.done
    result.skipped = len(done_before)
    result.failed_before = files.resumed.errors
    todo = (item for item in items if item[0] not in done_before) if done_before else items
    remaining = None if total is None else max(0, total - result.skipped)
    progress = BatchProgress(remaining, interval=options.progress_every) if options.progress else None
    slowest: list[tuple[float, int]] = []
    source = Pipeline(
        todo,
        ordered=options.ordered,
        on_error="collect",
        mp_context=options.mp_context,
        chunksize=options.chunksize,
    )
    pipe: Pipeline[Any] = source.map(
        functools.partial(run_input, fn, fmt, header),
        workers=options.workers,
        timeout=options.timeout,
        retries=options.retries,
        name=stage_name(fn),
    )
    committer = _Committer(files, options.sync_every, progress)
    start = time.monotonic()
    try:
        for item in pipe:
            if isinstance(item, FailedItem):
                files.add(_error_record(item, fmt, header), error=True)
                result.failed[_error_type(item.error)] += 1
                if progress is not None:
                    progress.update(failed=1)
                continue
            line, record, seconds = item
            files.add(record, error=False)
            result.done += 1
            if len(slowest) < SLOWEST:
                heapq.heappush(slowest, (seconds, line))
            elif seconds > slowest[0][0]:
                heapq.heapreplace(slowest, (seconds, line))
            if progress is not None:
                progress.update(done=1)
    except KeyboardInterrupt:
        # The pipeline has stopped (its iterator was dropped on the way out
        # of the loop); what was written is committed below, for --resume.
        result.interrupted = True
    finally:
        committer.stop(complete=not result.interrupted and sys.exc_info()[0] is None)
        if progress is not None:
            progress.close()
        result.seconds = time.monotonic() - start
        result.slowest = sorted(slowest, reverse=True)
        result.restarts = sum(stage.restarts for stage in pipe.stats())
    return result


class _Committer:
    """A thread that writes and commits the records every ``interval`` seconds.

    In a thread of its own, not between results, so the records of a job
    whose next input takes an hour still reach the disk, and the plain
    progress lines say what is committed.
    """

    def __init__(self, files: RecordFiles, interval: float, progress: BatchProgress | None) -> None:
        self._files = files
        self._interval = interval
        self._progress = progress
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="pool-batch-commit", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stopped.wait(self._interval):
                self._files.commit()
                if self._progress is not None:
                    self._progress.committed(self._files.written, self._files.written_errors)
        except BaseException as exc:  # noqa: BLE001  # raised in the job's thread by stop()
            self._error = exc

    def stop(self, complete: bool) -> None:
        """The last commit, in the caller's thread, once the thread is gone."""
        self._stopped.set()
        self._thread.join()
        self._files.commit(complete=complete)
        if self._error is not None:
            raise self._error


def _error_record(failed: FailedItem, fmt: str, header: list[str] | None) -> bytes:
    error = failed.error
    item = failed.item
    line = item[0] if isinstance(item, tuple) else failed.position + 1
    detail: dict[str, Any] = {"type": _error_type(error), "message": _message(error)}
    if isinstance(error, (WorkerLost, TaskTimeout)):
        detail["cause"] = "the worker died" if isinstance(error, WorkerLost) else "it ran past its timeout"
        detail["traceback"] = None
    elif isinstance(error, InputError):
        detail["traceback"] = None
    elif isinstance(error, SerializationError):
        # The worker sends records as bytes: only an input can fail to pickle.
        cause = error.__cause__
        detail["message"] = "the input cannot be pickled to go to a worker" + (
            f": {type(cause).__name__}: {_message(cause)}" if cause is not None else ""
        )
        detail["traceback"] = None
    else:
        detail["traceback"] = _traceback(error)
    shown = input_json(fmt, header, item) if isinstance(item, tuple) else "null"
    return record_line(line, shown, "error", json.dumps(detail))


def _error_type(error: BaseException) -> str:
    return type(error).__name__


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001  # a broken __str__ (even SystemExit) must not lose the record
        return f"<str() of {type(error).__name__} failed>"


def _traceback(error: BaseException) -> str | None:
    try:
        # From the user's function on: without `run_input`'s own frame.
        error = drop_frames_of(_inputs.__file__, error)
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001  # formatting runs the exception's own code
        return None


def _seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _same_file(a: str, b: str) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _identity(path: str) -> dict[str, Any]:
    if path == "-":
        return {"path": "-"}
    info = os.stat(path)
    return {"path": os.path.abspath(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _count_lines(path: str, fmt: str) -> int | None:
    """Inputs in the file, for the progress bar's total (one pass over its bytes)."""
    count = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        count += 1
    if fmt == "csv":
        count -= 1  # the header
    return max(0, count)
