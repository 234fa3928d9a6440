"""One run of a `Pipeline`: chunks of the source flowing through stage pools.

Threads of the caller's process that take part:

* the *feeder* reads the source, cuts it into chunks and pickles them. It
  waits while the pipeline holds `buffer` source items (or a bounded number
  of chunks), so a slow stage, or a caller that does not iterate, slows the
  reading of the source: memory stays bounded whatever the source's length.
* each stage pool's supervisor thread, in the done callback of a chunk's
  future, forwards the chunk's output bytes to the next stage without
  unpickling them, applies the error policy, and hands finished chunks to
  the caller, in source order unless the pipeline is unordered. The chunk
  states are shared under one lock. Forwarding in the callback, rather
  than through a thread of its own, saves a thread switch per chunk and
  stage: with the GIL, a switch can wait for the switch interval.
* the caller's thread, iterating, unpickles the last stage's output and
  yields it. Taking a chunk off the output queue is what frees its room in
  the buffer.

A chunk whose worker died or which ran out of time is not failed whole: its
items are run again one at a time, so the item to blame is found exactly,
and only that item fails (or is retried). Its neighbours run twice; a stage
function is assumed safe to run again, as with any retry.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _protocol as proto
from . import _stage
from ._broken import WorkerLost
from ._futures import Future
from ._mapping import MAX_CHUNK, TARGET_SECONDS
from ._pool import Pool
from ._serialize import add_note, dumps, loads, loads_exception
from ._task_timeout import TaskTimeout

# Chunks in flight per worker of every stage, plus a few waiting for the
# caller: enough that no worker waits for the driver between chunks.
CHUNKS_PER_WORKER = 2
CHUNKS_FOR_CALLER = 2

# A chunk of several items may run this many times the stage's timeout
# before it is split and its items run one at a time with the timeout
# itself. Chunks are sized to a quarter of the timeout, so only a stuck
# item makes a chunk late.
CHUNK_TIMEOUT_FACTOR = 2


@dataclass(frozen=True, slots=True)
class Raw:
    """An item kept as the object itself: a source item that could not be pickled."""

    value: Any


@dataclass(frozen=True)
class StageSpec:
    kind: str
    fn: Callable[..., Any]
    name: str
    workers: int
    timeout: float | None
    retries: int


@dataclass(slots=True)
class StageCounters:
    """What one stage did; the driver writes, `stats()` copies."""

    items_in: int = 0
    items_out: int = 0
    failed: int = 0
    retried: int = 0
    busy_seconds: float = 0.0
    per_item: float | None = None  # smoothed seconds per source item


@dataclass(slots=True, eq=False)
class Chunk:
    id: int
    first: int  # the source position of its first item
    size: int  # source items it holds room for in the buffer
    nbytes: int = 0  # its pickled size as read from the source, held against byte_limit
    stage: int = 0
    # Failures kept for the caller (on_error="collect"), as
    # (position, stage name, item bytes or None, exception or its bytes).
    failures: list[tuple[int, str, bytes | Raw | None, BaseException | bytes]] = field(default_factory=list)
    parts: list[bytes | None] | None = None  # outputs of its items run one at a time
    parts_left: int = 0


@dataclass(slots=True, eq=False)
class Piece:
    """One task: a whole chunk at a stage, or one of its items run alone."""

    chunk: Chunk
    part: int | None
    data: bytes
    items: int
    attempts: int = 1


# What the caller's thread receives.
Output = tuple[str, Any]


class Run:
    def __init__(
        self,
        source: Iterator[Any],
        stages: Sequence[StageSpec],
        *,
        ordered: bool,
        buffer: int,
        byte_limit: int | None,
        chunksize: int | None = None,
        on_error: str,
        mp_context: Any,
    ) -> None:
        self._source = source
        self._specs = list(stages)
        self._ordered = ordered
        self._buffer = buffer
        self._byte_limit = byte_limit
        self._on_error = on_error
        self.counters = [StageCounters() for _ in self._specs]
        total_workers = sum(spec.workers for spec in self._specs) or 1
        self._max_chunks = CHUNKS_PER_WORKER * total_workers + CHUNKS_FOR_CALLER
        self._cap = max(1, min(MAX_CHUNK, buffer // self._max_chunks))
        # The feeder's room, shared with the caller's thread.
        self._room = threading.Condition()
        self._held_items = 0
        self._held_bytes = 0
        self._in_hand = False  # the caller holds a chunk it took and has not finished
        self._bytes_per_item: float | None = None  # pickled, as read from the source
        self._ramp = 1  # see _chunk_size
        self._fixed = chunksize
        self._held_chunks = 0
        self._stopping = False
        self._lock = threading.RLock()  # the chunk states; reentrant: a callback may run inline
        self._outputs: queue.SimpleQueue[Output] = queue.SimpleQueue()
        # Driver state.
        self._live = 0
        self._source_done = False
        self._source_error: BaseException | None = None
        self._ready: dict[int, tuple[Chunk, bytes | None]] = {}
        self._next_out = 0
        self._failed = False
        self._pools: list[Pool] = []
        self._closed = False
        try:
            for spec in self._specs:
                self._pools.append(
                    Pool(
                        spec.workers,
                        mp_context,
                        initializer=_stage.install,
                        initargs=(spec.kind, spec.fn, spec.timeout, spec.name),
                    )
                )
            self._run_chunk = [pool._functions.lookup(_stage.run_chunk)[:2] for pool in self._pools]
            for pool in self._pools:
                # Every stage's workers start now, together: started at a stage's
                # first chunk, the starts would add up along the chain.
                pool._supervisor.start()
            # Daemon: a source blocked forever must not keep the interpreter alive.
            self._feeder = threading.Thread(target=self._feed, name="pool-pipeline-feeder", daemon=True)
            self._feeder.start()
        except BaseException:  # Ctrl-C included: nothing may be left running
            self._stop_pools(abort=True)
            raise

    # --- the caller's thread -------------------------------------------------

    def results(self) -> Iterator[tuple[Sequence[int], list[Any], list[Any]]]:
        """Finished chunks in output order: positions, items, failure records.

        A chunk's room in the buffer is freed when the caller asks for the
        next one, so what the loop has not consumed yet counts as held.
        """
        previous: Chunk | None = None
        while True:
            kind, payload = self._outputs.get()
            if previous is not None:
                self._free(previous)
                previous = None
            if kind == "chunk":
                chunk, data = payload
                previous = chunk
                with self._room:
                    self._in_hand = True
                    self._room.notify()  # the room rule changed: see _full
                if isinstance(data, list):  # no stage: the source's own objects
                    yield range(chunk.first, chunk.first + len(data)), data, chunk.failures
                    continue
                positions, items = _stage.unpack(data) if data is not None else ((), [])
                yield positions, items, chunk.failures
            elif kind == "error":
                raise payload
            else:  # "end"
                if payload is not None:
                    raise payload
                return

    def _free(self, chunk: Chunk) -> None:
        with self._room:
            self._held_items -= chunk.size
            self._held_bytes -= chunk.nbytes
            self._held_chunks -= 1
            self._in_hand = False
            self._room.notify()

    def close(self) -> None:
        """Stop everything; bounded in time whatever the stages are doing.

        Called where the iteration ends, or by the garbage collector in
        whatever thread it runs: in a stage's supervisor thread or the
        feeder, joining the supervisors would wait on the very thread doing
        it, so a thread of its own does the stopping there.
        """
        if self._closed:
            return
        self._closed = True
        current = threading.current_thread()
        if current is self._feeder or any(pool._supervisor._thread is current for pool in self._pools):
            threading.Thread(target=self._close, name="pool-pipeline-closer", daemon=True).start()
        else:
            self._close()

    def _close(self) -> None:
        with self._lock:  # no chunk is being handled after this
            with self._room:
                self._stopping = True
                self._room.notify_all()
            finished = self._source_done and self._live == 0 and not self._failed
        self._stop_pools(abort=not finished)

    def restarts(self) -> list[int]:
        """Workers started in each stage beyond its first ones."""
        return [max(0, pool._supervisor.spawned - pool.max_workers) for pool in self._pools]

    # --- the feeder ------------------------------------------------------------

    def _feed(self) -> None:
        position = 0
        error: BaseException | None = None
        try:
            for chunk_id in itertools.count():
                size = self._reserve()
                if size == 0:
                    return  # stopping
                items: list[Any] = []
                try:
                    items.extend(itertools.islice(self._source, size))  # keeps what came before a raise
                except BaseException as exc:  # noqa: BLE001  # raised to the caller after what came before
                    add_note(exc, f"raised by the pipeline's source after {position + len(items)} items")
                    error = exc
                self._release(size - len(items), 0 if items else 1)
                if items:
                    data, failures = self._pack(position, items) if self._specs else (items, [])
                    nbytes = len(data) if isinstance(data, bytes) else 0
                    with self._room:
                        self._held_bytes += nbytes
                        per_item = nbytes / len(items)
                        known = self._bytes_per_item
                        self._bytes_per_item = per_item if known is None else (known + per_item) / 2
                    chunk = Chunk(chunk_id, position, len(items), nbytes=nbytes)
                    self._handle(self._on_fed, chunk, data, failures)
                    position += len(items)
                if error is not None or len(items) < size:
                    return
        except BaseException as exc:  # noqa: BLE001  # the feeder's own failure ends the run, loudly
            error = exc
        finally:
            self._handle(self._on_source_end, error)
            if self._stopping:
                _close_source(self._source)

    def _reserve(self) -> int:
        with self._room:
            while not self._stopping and self._full():
                self._room.wait()
            if self._stopping:
                return 0
            size = max(1, min(self._chunk_size(), self._buffer - self._held_items))
            self._held_items += size
            self._held_chunks += 1
            return size

    def _full(self) -> bool:
        """No room for another chunk (``_room`` held).

        The chunk the caller is consuming counts as held, except when it is
        all that is held: then the pipeline reads on, or the caller would
        wait for a chunk that waits for room it holds.
        """
        if self._in_hand and self._held_chunks == 1:
            return False
        return (
            self._held_chunks >= self._max_chunks
            or self._held_items >= self._buffer
            or (self._byte_limit is not None and self._held_bytes >= self._byte_limit)
        )

    def _release(self, items: int, chunks: int) -> None:
        if items or chunks:
            with self._room:
                self._held_items -= items
                self._held_chunks -= chunks
                self._room.notify()

    def _chunk_size(self) -> int:
        """About TARGET_SECONDS of work for the slowest stage, within the cap.

        While a stage has not timed a chunk yet, sizes start at one item and
        double chunk by chunk: a slow stage nobody measured gets small
        chunks, and one that items rarely reach (behind a selective filter)
        does not hold every chunk at one item.
        """
        if self._fixed is not None:
            return min(self._fixed, self._buffer)
        size = float(self._cap)
        unmeasured = False
        for spec, counters in zip(self._specs, self.counters):  # noqa: B905
            per_item = counters.per_item
            if per_item is None:
                unmeasured = True
            elif per_item > 0:
                size = min(size, TARGET_SECONDS / per_item)
                if spec.timeout is not None:
                    size = min(size, spec.timeout / (4 * per_item))
        if unmeasured:
            size = min(size, self._ramp)
            self._ramp *= 2
        if self._byte_limit is not None and self._bytes_per_item:
            # Large items: chunks small enough that several fit the byte limit.
            size = min(size, self._byte_limit / self._max_chunks / self._bytes_per_item)
        return max(1, int(size))

    def _pack(
        self, first: int, items: list[Any]
    ) -> tuple[bytes | None, list[tuple[int, BaseException, Any]]]:
        try:
            return _stage.pack(range(first, first + len(items)), items), []
        except Exception:  # noqa: BLE001  # find the items that cannot be pickled; they fail alone
            pass
        what = "the item at position {position} of the pipeline's source"
        positions, kept, unpicklable = _stage.split_picklable(range(first, first + len(items)), items, what)
        failures: list[tuple[int, BaseException, Any]] = [
            (position, error, item) for position, item, error in unpicklable
        ]
        return (_stage.pack(positions, kept) if kept else None), failures

    # --- the driver ------------------------------------------------------------

    def _handle(self, handler: Callable[..., None], *args: Any) -> None:
        """Run ``handler`` on the chunk states; after the end, do nothing."""
        with self._lock:
            if self._failed or self._stopping:
                return  # what arrives after the end is dropped
            try:
                handler(*args)
            except BaseException as exc:  # noqa: BLE001  # a bug or odd data ends the run, loudly
                self._fail_run(exc)

    def _on_source_end(self, error: BaseException | None) -> None:
        self._source_done = True
        self._source_error = error
        self._check_end()

    def _on_fed(
        self, chunk: Chunk, data: bytes | None, failures: list[tuple[int, BaseException, Any]]
    ) -> None:
        self._live += 1
        for position, error, item in failures:
            if self._specs:
                self.counters[0].items_in += 1
                self.counters[0].failed += 1
                self._on_failure(chunk, 0, position, Raw(item), error, None)
            else:
                self._on_failure(chunk, -1, position, Raw(item), error, None)
        if data is None:
            self._finish(chunk, None)
            return
        count = chunk.size - len(failures)
        if self._specs:
            self.counters[0].items_in += count
        self._advance(chunk, data, count, first=True)

    def _advance(self, chunk: Chunk, data: bytes, items: int, *, first: bool = False) -> None:
        if not first:
            chunk.stage += 1
        if items == 0 or chunk.stage >= len(self._specs):
            self._finish(chunk, data if items else None)
            return
        if not first:
            self.counters[chunk.stage].items_in += items
        self._submit(Piece(chunk, None, data, items))

    def _submit(self, piece: Piece) -> None:
        stage = piece.chunk.stage
        spec = self._specs[stage]
        timeout = spec.timeout
        if timeout is not None and piece.items > 1:
            timeout *= CHUNK_TIMEOUT_FACTOR
        fn_id, fn_bytes = self._run_chunk[stage]
        future = self._pools[stage]._enqueue(
            spec.name, proto.CALL, fn_id, fn_bytes, dumps(((piece.data,), {})), timeout, 0
        )
        future.add_done_callback(lambda f: None if f.cancelled() else self._handle(self._on_done, piece, f))

    def _on_done(self, piece: Piece, future: Future[Any]) -> None:
        if future.cancelled():
            return  # only while stopping
        error = future.exception()
        if error is not None:
            if isinstance(error, (WorkerLost, TaskTimeout)):
                self._on_lost(piece, error)
            else:  # the stage cannot run at all (its function would not load, ...)
                self._fail_run(error)
            return
        data, failures, seconds, pid, _, items_out = future.result()
        chunk = piece.chunk
        counters = self.counters[chunk.stage]
        counters.busy_seconds += seconds
        counters.items_out += items_out
        if piece.part is None and chunk.size:
            per_item = seconds / chunk.size
            counters.per_item = per_item if counters.per_item is None else (counters.per_item + per_item) / 2
        for position, item, exc_bytes in failures:
            counters.failed += 1
            self._on_failure(chunk, chunk.stage, position, item, exc_bytes, pid)
            if self._failed:
                return
        if piece.part is None:
            self._advance(chunk, data, items_out)
        else:
            self._part_done(piece, data, items_out)

    def _on_lost(self, piece: Piece, error: BaseException) -> None:
        """The piece's worker died or it ran out of time."""
        chunk = piece.chunk
        counters = self.counters[chunk.stage]
        if piece.items > 1:
            # Which item to blame is not known: run each alone.
            positions, items = _stage.unpack(piece.data)
            chunk.parts = [None] * len(items)
            chunk.parts_left = len(items)
            counters.retried += len(items)
            for index, (position, item) in enumerate(zip(positions, items)):  # noqa: B905
                # Its run in the chunk was its first attempt: with retries=0 the
                # item to blame fails when it kills its worker again alone.
                self._submit(Piece(chunk, index, _stage.pack([position], [item]), 1, attempts=2))
            return
        if isinstance(error, WorkerLost) and piece.attempts <= self._specs[chunk.stage].retries:
            counters.retried += 1
            self._submit(Piece(chunk, piece.part, piece.data, 1, piece.attempts + 1))
            return
        counters.failed += 1
        positions, items = _stage.unpack(piece.data)
        item_bytes = _stage.dumps_or_none(items[0]) if items else None
        position = positions[0] if positions else chunk.first
        self._on_failure(chunk, chunk.stage, position, item_bytes, error, None)
        if self._failed:
            return
        if piece.part is None:
            self._advance(chunk, _stage.pack([], []), 0)
        else:
            self._part_done(piece, None, 0)

    def _part_done(self, piece: Piece, data: bytes | None, items: int) -> None:
        chunk = piece.chunk
        assert chunk.parts is not None and piece.part is not None
        chunk.parts[piece.part] = data
        chunk.parts_left -= 1
        if chunk.parts_left:
            return
        positions: list[int] = []
        outputs: list[Any] = []
        for part in chunk.parts:
            if part is not None:
                part_positions, part_items = _stage.unpack(part)
                positions.extend(part_positions)
                outputs.extend(part_items)
        chunk.parts = None
        self._advance(chunk, _stage.pack(positions, outputs), len(outputs))

    def _on_failure(
        self,
        chunk: Chunk,
        stage: int,
        position: int,
        item: bytes | Raw | None,
        error: BaseException | bytes,
        pid: int | None,
    ) -> None:
        name = self._specs[stage].name if stage >= 0 else "source"
        if self._on_error == "skip":
            return  # counted in the stage's failures
        if self._on_error == "collect":
            chunk.failures.append((position, name, item, error))
        else:
            exc = loads_exception(error) if isinstance(error, bytes) else error
            where = f"in pipeline stage {name!r}, on item {position} of the source"
            if pid is not None:
                where += f" (worker pid {pid})"
            try:
                add_note(exc, where)
            except BaseException:  # noqa: BLE001  # odd __notes__: raised without the note
                pass
            self._fail_run(exc)

    def _finish(self, chunk: Chunk, data: bytes | None) -> None:
        if self._ordered:
            self._ready[chunk.id] = (chunk, data)
            while self._next_out in self._ready:
                self._emit(*self._ready.pop(self._next_out))
                self._next_out += 1
        else:
            self._emit(chunk, data)

    def _emit(self, chunk: Chunk, data: bytes | None) -> None:
        self._live -= 1
        self._outputs.put(("chunk", (chunk, data)))
        self._check_end()

    def _check_end(self) -> None:
        if self._source_done and self._live == 0:
            self._outputs.put(("end", self._source_error))

    def _fail_run(self, error: BaseException) -> None:
        """The first failure (on_error="raise"): stop every stage, tell the caller."""
        self._failed = True
        with self._room:
            self._stopping = True
            self._room.notify_all()
        for pool in self._pools:
            pool._supervisor.abort()
        self._outputs.put(("error", error))

    # --- pools ------------------------------------------------------------------

    def _stop_pools(self, *, abort: bool) -> None:
        for pool in self._pools:
            if abort:
                pool._closed = True
                pool._supervisor.abort()
            else:
                pool.shutdown(wait=False)
        for pool in self._pools:
            pool._supervisor.join()


def _close_source(source: Iterator[Any]) -> None:
    """Close a generator source the pipeline stopped reading, in the thread that ran it.

    Its ``finally`` blocks (a file's ``with``) run now, not whenever it is
    collected; the items it would yield next are not wanted.
    """
    close = getattr(source, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001  # the run is over; a failing close must not mask why
            pass


def failure_record(
    record: tuple[int, str, bytes | Raw | None, BaseException | bytes],
) -> tuple[int, str, Any, BaseException]:
    """Rebuild a kept failure in the caller's thread: position, stage, item, exception."""
    position, name, item_bytes, error = record
    exc = loads_exception(error) if isinstance(error, bytes) else error
    item: Any = None
    if isinstance(item_bytes, Raw):
        item = item_bytes.value
    elif item_bytes is not None:
        try:
            item = loads(item_bytes)
        except Exception:  # noqa: BLE001  # the item would not rebuild here: report without it
            item = None
    return position, name, item, exc
