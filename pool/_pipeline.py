"""`Pipeline`: chain stages of process workers over a lazily read source.

Each stage is a function and its own pool of workers. Building a pipeline
runs nothing; iterating it starts every stage's workers, streams the source
through them in chunks (see `pool._flow`), and stops them all when the
iteration ends, however it ends: exhausted, ``break``, an error, Ctrl-C.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import _stage
from ._flow import Run, StageSpec, failure_record
from ._mapping import length_of
from ._pool import _check_callable, _check_count, _check_timeout
from ._progress import progress_bar
from ._serialize import describe_callable, dumps_function

__all__ = ["FailedItem", "Pipeline", "StageStats"]

T = TypeVar("T")
U = TypeVar("U")

ON_ERROR = ("raise", "skip", "collect")

# When ``buffer`` is not given, the pipeline holds at most this many source
# items (read, not yet yielded), and stops reading while the chunks it holds
# took more than DEFAULT_BUFFER_BYTES to pickle. Tiny items need many in
# flight: each chunk waits for a thread switch at every stage, and a
# 3-stage chain of tiny items ran at 1.8M items/s with 8,192 in flight,
# 3.5M with 65,536. Large items hit the byte limit long before.
DEFAULT_BUFFER = 65_536
DEFAULT_BUFFER_BYTES = 64 * 2**20


@dataclass(frozen=True)
class FailedItem:
    """What ``on_error="collect"`` yields in place of an item that failed.

    ``stage`` is the failing stage's name, ``position`` the source position
    of the item it came from (counting from 0), ``item`` the stage's input
    (None if it could not be sent back), ``error`` the exception: the one
    raised, or `WorkerLost`, `TaskTimeout`, `SerializationError`.
    """

    __module__ = "pool"

    stage: str
    position: int
    item: Any
    error: BaseException


@dataclass(frozen=True)
class StageStats:
    """One stage's counts, from `Pipeline.stats`.

    ``items_in`` and ``items_out`` count the items the stage received and
    passed on; ``failed`` the items that failed in it; ``retried`` the runs
    of an item beyond its first (after a worker died or a chunk timed out);
    ``busy_seconds`` the time its workers spent in the function; and
    ``restarts`` the workers started to replace others.
    """

    __module__ = "pool"

    name: str
    workers: int
    items_in: int
    items_out: int
    failed: int
    retried: int
    busy_seconds: float
    restarts: int


class Pipeline(Generic[T]):
    """A chain of stages, each run by its own worker processes.

    ``source`` is any iterable, read lazily. Results come out in source order
    (``ordered=False``: as soon as they are ready). ``buffer`` bounds the
    source items held inside the pipeline at once: a slow stage slows the
    reading of the source instead of filling memory. By default it is 65,536
    items or 64 MiB of pickled source items, whichever comes first. ``on_error`` says what
    a failed item does: ``"raise"`` (stop every stage, raise the exception
    with the stage's name and the item's position in a note), ``"skip"``
    (drop it and count it) or ``"collect"`` (yield a `FailedItem` in its
    place). ``mp_context`` is as for `Pool`. ``chunksize`` fixes how many
    source items travel together (default: sized to about 20 ms of work of
    the slowest stage). ``progress=True`` shows a progress bar (tqdm) of the
    items coming out.

    Every stage method returns a new pipeline with that stage added::

        for word in Pipeline(lines).flat_map(str.split, workers=2).map(len):
            ...
    """

    __module__ = "pool"

    def __init__(
        self,
        source: Iterable[T],
        *,
        ordered: bool = True,
        buffer: int | None = None,
        on_error: str = "raise",
        mp_context: Any = None,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(source, Iterable):
            raise TypeError(f"a pipeline's source must be iterable, not {type(source).__qualname__}")
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be True or False, not {type(ordered).__qualname__}")
        if buffer is not None:
            buffer = _check_count("buffer", buffer, 1)
        if chunksize is not None:
            chunksize = _check_count("chunksize", chunksize, 1)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, not {type(progress).__qualname__}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, got {on_error!r}")
        self._source = source
        self._ordered = ordered
        self._buffer = DEFAULT_BUFFER if buffer is None else buffer
        self._byte_limit = DEFAULT_BUFFER_BYTES if buffer is None else None
        self._on_error = on_error
        self._mp_context = mp_context
        self._chunksize = chunksize
        self._progress = progress
        self._stages: tuple[StageSpec, ...] = ()
        self._run: Run | None = None
        self._started = False

    def map(
        self,
        fn: Callable[[T], U],
        *,
        workers: int = 1,
        timeout: float | None = None,
        retries: int = 0,
        name: str | None = None,
    ) -> Pipeline[U]:
        """Add a stage that passes on ``fn(item)`` for each item."""
        return self._with(_stage.MAP, fn, workers, timeout, retries, name)

    def filter(
        self,
        fn: Callable[[T], object],
        *,
        workers: int = 1,
        timeout: float | None = None,
        retries: int = 0,
        name: str | None = None,
    ) -> Pipeline[T]:
        """Add a stage that passes on the items for which ``fn(item)`` is true."""
        return self._with(_stage.FILTER, fn, workers, timeout, retries, name)

    def flat_map(
        self,
        fn: Callable[[T], Iterable[U]],
        *,
        workers: int = 1,
        timeout: float | None = None,
        retries: int = 0,
        name: str | None = None,
    ) -> Pipeline[U]:
        """Add a stage that passes on every item of the iterable ``fn(item)`` returns."""
        return self._with(_stage.FLAT_MAP, fn, workers, timeout, retries, name)

    def each(
        self,
        fn: Callable[[T], object],
        *,
        workers: int = 1,
        timeout: float | None = None,
        retries: int = 0,
        name: str | None = None,
    ) -> Pipeline[Any]:
        """Add a stage that calls ``fn(item)`` for its side effect and passes nothing on."""
        return self._with(_stage.EACH, fn, workers, timeout, retries, name)

    def _with(
        self,
        kind: str,
        fn: Callable[..., Any],
        workers: int,
        timeout: float | None,
        retries: int,
        name: str | None,
    ) -> Pipeline[Any]:
        _check_callable(fn)
        if name is None:
            name = stage_name(fn)
        elif not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, not {name!r}")
        spec = StageSpec(
            kind=kind,
            fn=fn,
            name=name,
            workers=_check_count("workers", workers, 1),
            timeout=_check_timeout("timeout", timeout),
            retries=_check_count("retries", retries, 0),
        )
        dumps_function(fn)  # a function that cannot be pickled fails here, named
        pipeline: Pipeline[Any] = Pipeline.__new__(Pipeline)
        pipeline.__dict__.update(self.__dict__)
        pipeline._stages = (*self._stages, spec)
        pipeline._run = None
        pipeline._started = False
        return pipeline

    def __iter__(self) -> Iterator[T]:
        """Run the pipeline, yielding what comes out of its last stage.

        A pipeline runs once. Stopping early (``break``, an exception in the
        loop, Ctrl-C) stops every stage's workers before the loop is left.
        """
        if self._started:
            raise RuntimeError("this pipeline already ran; build a new one to run again")
        self._started = True
        # The items of each chunk are yielded by chain, in C: a generator
        # yielding item by item would cost the caller's thread more than all
        # the rest of its work for tiny items.
        items = itertools.chain.from_iterable(self._chunks(iter(self._source)))  # TypeError here
        if self._progress:
            return progress_bar(items, total=length_of((self._source,)), unit="item")
        return items

    def _chunks(self, source: Iterator[Any]) -> Iterator[list[Any]]:
        # Started at the first next(), inside the generator: an iterator
        # dropped before it (``zip([], pipe)``) has started nothing.
        run = self._run = Run(
            source,
            self._stages,
            ordered=self._ordered,
            buffer=self._buffer,
            byte_limit=self._byte_limit,
            on_error=self._on_error,
            mp_context=self._mp_context,
            chunksize=self._chunksize,
        )
        try:
            for positions, items, failures in run.results():
                if not failures:
                    yield items
                    continue
                records = [failure_record(record) for record in failures]
                yield list(_merge(positions, items, records))
        finally:
            run.close()

    def run(self) -> int:
        """Run the pipeline to its end for the stages' side effects; return how many items came out."""
        count = 0
        for _ in self:
            count += 1
        return count

    def stats(self) -> list[StageStats]:
        """Per stage, in order: what it received, passed on, failed and retried; also after the run."""
        run = self._run
        stats = []
        restarts = run.restarts() if run is not None else [0] * len(self._stages)
        for index, spec in enumerate(self._stages):
            counters = run.counters[index] if run is not None else None
            stats.append(
                StageStats(
                    name=spec.name,
                    workers=spec.workers,
                    items_in=counters.items_in if counters else 0,
                    items_out=counters.items_out if counters else 0,
                    failed=counters.failed if counters else 0,
                    retried=counters.retried if counters else 0,
                    busy_seconds=counters.busy_seconds if counters else 0.0,
                    restarts=restarts[index],
                )
            )
        return stats

    def __repr__(self) -> str:
        stages = " | ".join(f"{spec.kind}({spec.name}, workers={spec.workers})" for spec in self._stages)
        return f"<pool.Pipeline {stages or 'no stages'}>"


def stage_name(fn: Callable[..., Any]) -> str:
    """A stage's default name: its function's, seen through ``functools.partial``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else describe_callable(fn)


def _merge(
    positions: Iterable[int], items: list[Any], records: list[tuple[int, str, Any, BaseException]]
) -> Iterator[Any]:
    """Outputs and failure records interleaved by source position."""
    pending = sorted(records, key=lambda record: record[0])
    index = 0
    for position, item in zip(positions, items):  # noqa: B905  # packed together
        while index < len(pending) and pending[index][0] < position:
            yield _failed(pending[index])
            index += 1
        yield item
    for record in pending[index:]:
        yield _failed(record)


def _failed(record: tuple[int, str, Any, BaseException]) -> FailedItem:
    position, stage, item, error = record
    return FailedItem(stage=stage, position=position, item=item, error=error)
