"""``map`` and friends: chunking an input and streaming results back.

An input is cut into chunks, each chunk one task, so a million tiny items
cost a few hundred messages instead of a million. At most a *window* of
chunks is in flight; the next chunk is read from the input only when one
has been consumed, so an endless generator runs in constant memory.

Chunk sizes adapt when the caller does not choose one: the first chunks
hold one item each (a slow function costs no more than with chunksize=1),
then each chunk is sized to take about `TARGET_SECONDS` of worker time,
judged from the time the worker measured for the chunks before it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

from ._futures import Future
from ._serialize import add_note, loads_exception

# Worker time one chunk should take. Longer means fewer messages (better for
# tiny items) but coarser load balance at the end of a run and results that
# arrive in bigger bursts.
TARGET_SECONDS = 0.02

# No chunk holds more items than this: bounds the memory of one chunk and of
# one result message whatever the measured speed.
MAX_CHUNK = 10_000

# Chunks in flight per worker: enough that a worker never waits for the
# caller to cut the next chunk, few enough to keep memory bounded.
WINDOW_PER_WORKER = 4

SubmitChunk = Callable[[list[Any], int], "Future[Any]"]


class Chunker:
    """Chooses the size of the next chunk (see the module docstring)."""

    def __init__(self, chunksize: int | None, total: int | None, workers: int) -> None:
        self.fixed = chunksize
        # Keep at least 4 chunks per worker so the last ones balance out.
        self.cap = MAX_CHUNK if total is None else max(1, min(MAX_CHUNK, total // (4 * workers)))
        self.per_item: float | None = None

    def size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        if self.per_item <= 0:
            return self.cap
        return max(1, min(self.cap, int(TARGET_SECONDS / self.per_item)))

    def observe(self, items: int, seconds: float) -> None:
        if items:
            per_item = seconds / items
            self.per_item = per_item if self.per_item is None else (self.per_item + per_item) / 2


def static_chunksize(total: int, workers: int) -> int:
    """The chunk size for an input submitted all at once (``map`` on a sized input)."""
    return max(1, min(MAX_CHUNK, math.ceil(total / (4 * workers))))


def length_of(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class ChunkedResults:
    """Results of a chunked map, in input order or as they complete.

    The first window is submitted when the object is made, so work starts at
    the call as with ``Executor.map``; the rest as the caller consumes
    (`chunks`). Dropped before its first item, it cancels nothing, as
    ProcessPoolExecutor's ``map``: code that maps for the side effects and
    never iterates still gets its work done.
    """

    def __init__(
        self,
        submit_chunk: SubmitChunk,
        items: Iterator[Any],
        chunker: Chunker,
        window: int | None,
        ordered: bool,
        timeout: float | None,
    ) -> None:
        self._submit_chunk = submit_chunk
        self._items = items
        self._chunker = chunker
        self._window = window
        self._ordered = ordered
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._in_flight: deque[Future[Any]] = deque()
        self._completed: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._position: dict[Future[Any], int] = {}
        self._next_item = 0
        self._exhausted = False
        self._closed = False
        self._input_error: Exception | None = None
        self._primed = False
        self._top_up()
        self._primed = True

    def _top_up(self) -> None:
        """Submit chunks until the window is full or the input ends.

        An error reading the input, or pickling an item, is kept until the
        results of every item before it are out, then raised: the map ends
        there, as it does when an item raises, and loses no result.
        """
        while not self._exhausted and (self._window is None or len(self._in_flight) < self._window):
            chunk: list[Any] = []
            try:
                chunk.extend(itertools.islice(self._items, self._chunker.size()))
            except Exception as exc:  # noqa: BLE001  # kept, raised in its place in the results
                self._stop_reading(exc)
            if not chunk:
                self._exhausted = True
                break
            try:
                self._submit(chunk)
            except Exception as exc:  # noqa: BLE001  # kept, raised in its place in the results
                if len(chunk) == 1:
                    self._stop_reading(exc)
                    break
                # Submit one by one, up to the item that cannot be pickled.
                for item in chunk:
                    try:
                        self._submit([item])
                    except Exception as item_exc:  # noqa: BLE001  # kept, raised in its place
                        self._stop_reading(item_exc)
                        break

    def _submit(self, chunk: list[Any]) -> None:
        future = self._submit_chunk(chunk, self._next_item)
        self._position[future] = self._next_item
        self._next_item += len(chunk)
        self._in_flight.append(future)
        if not self._ordered:
            future.add_done_callback(self._completed.put_nowait)

    def _stop_reading(self, error: Exception) -> None:
        if not self._in_flight and not self._primed:
            raise error  # the first item: fail now, at the call, as submit does
        self._exhausted = True
        self._input_error = error

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def _next_done(self) -> Future[Any]:
        future: Future[Any]
        if self._ordered:
            future = self._in_flight[0]
            # Wait without fetching: the chunk's own error is raised by
            # __next__; only our interruptions (Ctrl-C) come out of here.
            done, _ = concurrent.futures.wait([future], self._remaining())
            if not done:
                raise FuturesTimeoutError()  # still in flight: close() cancels it
            return self._in_flight.popleft()
        try:
            future = self._completed.get(timeout=self._remaining())
        except queue.Empty:
            raise FuturesTimeoutError() from None
        self._in_flight.remove(future)
        return future

    def chunks(self) -> Iterator[Iterable[Any]]:
        """Each chunk's results, in turn: for ``itertools.chain.from_iterable``.

        The caller's loop then takes each item in C, not through a Python
        ``__next__``: per item that was most of a tiny map's time in this
        process. Closed or dropped once started (``break``), it cancels the
        chunks not started; an item that raised, a timeout or Ctrl-C end it.
        """
        try:
            while not self._closed and self._in_flight:
                future = self._next_done()
                results, error, seconds = future.result()
                first = self._position.pop(future)
                self._chunker.observe(len(results) + (error is not None), seconds)
                if error is not None:
                    # The map ends at the item that raised, as Executor.map's does.
                    self.close()
                    yield _then_raise(results, error, first + len(results))
                    return
                self._top_up()
                yield results
            error, self._input_error = self._input_error, None
            if error is not None:
                raise error
        finally:
            self.close()

    def close(self) -> None:
        """Stop: cancel every chunk that has not started."""
        self._closed = True
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()


def _then_raise(results: list[Any], error: bytes, position: int) -> Iterator[Any]:
    yield from results
    exc = loads_exception(error)
    try:
        add_note(exc, f"raised by the item at position {position} of the input")
    except BaseException:  # noqa: BLE001  # odd __notes__: raise it without the note
        pass
    raise exc
