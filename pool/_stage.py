"""A pipeline stage's work inside a worker: one chunk of items in, one out.

Each stage of a `Pipeline` is a `Pool` whose workers were initialized with
the stage's function (`install`), so the function crosses the pipe once per
worker, not once per chunk. A chunk travels between stages as the bytes
`pack` makes: its items and, for each, its position in the source. The
caller's process forwards those bytes from one stage to the next without
unpickling them; only the last stage's output is unpickled, by the caller.

An item that raises fails alone: `run_chunk` catches per item and reports
the failure next to the outputs of the others, with the item's position
and the item itself, so the pipeline can raise it, skip it or hand it over.
"""

from __future__ import annotations

import itertools
import os
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._errors import SerializationError
from ._serialize import describe_callable, drop_frames_of, dumps, dumps_exception, loads
from ._task_timeout import TaskTimeout

MAP = "map"
FILTER = "filter"
FLAT_MAP = "flat_map"
EACH = "each"
KINDS = (MAP, FILTER, FLAT_MAP, EACH)

# A failure as the worker reports it: (position, item bytes or None, exception bytes).
Failure = tuple[int, "bytes | None", bytes]

_kind: str | None = None
_fn: Callable[..., Any] | None = None


def install(kind: str, fn: Callable[..., Any], timeout: float | None = None, name: str = "") -> None:
    """The stage pool's initializer: remember what this worker runs.

    With a ``timeout``, each item is timed: one that took longer fails with
    `TaskTimeout` even if its chunk, given more time as a whole (see
    `pool._flow`), was not stopped, so an item's outcome does not depend on
    how the items were chunked.
    """
    global _kind, _fn
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}")
    _kind, _fn = kind, fn if timeout is None else _timed(fn, timeout, name or describe_callable(fn))


def _timed(fn: Callable[..., Any], timeout: float, name: str) -> Callable[..., Any]:
    def timed(item: Any) -> Any:
        start = time.perf_counter()
        result = fn(item)
        if time.perf_counter() - start > timeout:
            raise TaskTimeout(name, timeout, os.getpid())
        return result

    return timed


def positions_of(values: Sequence[int]) -> Sequence[int]:
    """Positions in a compact picklable form: a range stays one, a list becomes an array."""
    if isinstance(values, (range, array)):
        return values
    return array("q", values)


def pack(positions: Sequence[int], items: list[Any]) -> bytes:
    """A chunk as it travels: may raise if an item cannot be pickled."""
    return dumps((positions_of(positions), items))


def unpack(data: bytes) -> tuple[Sequence[int], list[Any]]:
    positions, items = loads(data)
    return positions, items


def run_chunk(data: bytes) -> tuple[bytes, list[Failure], float, int, int, int]:
    """Run the installed stage over one chunk.

    Returns the output chunk's bytes, the failures, the seconds the items
    took, this worker's pid, and how many items went in and came out.
    """
    kind, fn = _kind, _fn
    if fn is None:
        raise RuntimeError("no pipeline stage is installed in this worker")
    positions, items = unpack(data)
    start = time.perf_counter()
    failures: list[Failure] = []
    if kind == FLAT_MAP:
        outputs, out_positions = _flat_map(fn, positions, items, failures)
        return _finish(out_positions, outputs, failures, start, len(items))
    values, ok = _call_each(fn, positions, items, failures, truth=kind == FILTER)
    if ok is not None:  # some items failed: keep the others, in order
        positions = [positions[i] for i in ok]
        items = [items[i] for i in ok]
    if kind == MAP:
        return _finish(positions, values, failures, start, len(items) + len(failures))
    if kind == FILTER:  # the values are the truth of fn(item), taken in _call_each
        if all(values):
            return _finish(positions, items, failures, start, len(items) + len(failures))
        kept = list(itertools.compress(items, values))
        kept_positions = list(itertools.compress(positions, values))
        return _finish(kept_positions, kept, failures, start, len(values) + len(failures))
    return _finish((), [], failures, start, len(items) + len(failures))  # EACH


def _call_each(
    fn: Callable[[Any], Any],
    positions: Sequence[int],
    items: list[Any],
    failures: list[Failure],
    truth: bool = False,
) -> tuple[list[Any], list[int] | None]:
    """``fn`` of every item, at the speed of the builtin ``map``.

    An item that raises is recorded in ``failures`` and skipped; the items
    after it still run, once each. Returns the values (with ``truth``, their
    truth) and, when some item failed, the indices of the items they belong to.
    """
    values: list[Any] = []
    failed: list[int] = []
    begin = 0
    while begin < len(items):
        before = len(values)
        try:
            # extend() keeps what map() produced before a raise. A filter's
            # truth is taken here too: bool() of a numpy array raises.
            called = map(fn, itertools.islice(items, begin, None))
            values.extend(map(bool, called) if truth else called)
        except BaseException as exc:  # noqa: BLE001  # SystemExit too: the item fails, not the worker
            error: BaseException = exc
        else:
            if begin + len(values) - before == len(items):
                break
            # map() ended early: fn raised StopIteration, which map takes for
            # its own end. As in a generator (PEP 479), that is an error.
            error = RuntimeError(f"{describe_callable(fn)} raised StopIteration")
        index = begin + len(values) - before
        item = items[index]
        failures.append((positions[index], dumps_or_none(item), dumps_exception(_user_frames(error))))
        failed.append(index)
        begin = index + 1
    if not failed:
        return values, None
    skipped = set(failed)
    return values, [i for i in range(len(items)) if i not in skipped]


def _flat_map(
    fn: Callable[[Any], Any], positions: Sequence[int], items: list[Any], failures: list[Failure]
) -> tuple[list[Any], list[int]]:
    outputs: list[Any] = []
    out_positions: list[int] = []
    for position, item in zip(positions, items):  # noqa: B905  # packed together
        try:
            produced = list(_iterate(fn(item)))  # all or nothing, if it raises midway
        except BaseException as exc:  # noqa: BLE001  # SystemExit too: the item fails, not the worker
            failures.append((position, dumps_or_none(item), dumps_exception(_user_frames(exc))))
        else:
            outputs.extend(produced)
            out_positions.extend([position] * len(produced))
    return outputs, out_positions


def _finish(
    positions: Sequence[int], outputs: list[Any], failures: list[Failure], start: float, items_in: int
) -> tuple[bytes, list[Failure], float, int, int, int]:
    seconds = time.perf_counter() - start
    count = len(outputs)
    try:
        packed = pack(positions, outputs)
    except Exception:  # noqa: BLE001  # find the outputs that cannot be pickled; they fail alone
        packed, count = _pack_picklable(list(positions), outputs, failures)
    return packed, failures, seconds, os.getpid(), items_in, count


def _iterate(produced: object) -> Iterable[Any]:
    if not isinstance(produced, Iterable):
        raise TypeError(
            f"a flat_map function must return an iterable of items, not {type(produced).__qualname__}"
        )
    return produced


def _pack_picklable(positions: list[int], outputs: list[Any], failures: list[Failure]) -> tuple[bytes, int]:
    kept_positions, kept, unpicklable = split_picklable(
        positions, outputs, "the output for the item at position {position}"
    )
    failures.extend((position, None, dumps_exception(error)) for position, _, error in unpicklable)
    failures.sort(key=lambda failure: failure[0])
    return pack(kept_positions, kept), len(kept)


def split_picklable(
    positions: Iterable[int], items: Iterable[Any], what: str
) -> tuple[list[int], list[Any], list[tuple[int, Any, SerializationError]]]:
    """The items that pickle, with their positions, and a clear error for each other one.

    ``what`` names an item in the error, with ``{position}`` in it.
    """
    kept_positions: list[int] = []
    kept: list[Any] = []
    failed: list[tuple[int, Any, SerializationError]] = []
    for position, item in zip(positions, items):  # noqa: B905  # built together
        try:
            dumps(item)
        except Exception as exc:  # noqa: BLE001  # this item fails, with a clear error
            error = SerializationError(
                f"cannot pickle {what.format(position=position)}, "
                f"of type {type(item).__qualname__}: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            failed.append((position, item, error))
        else:
            kept_positions.append(position)
            kept.append(item)
    return kept_positions, kept, failed


def dumps_or_none(item: object) -> bytes | None:
    try:
        return dumps(item)
    except Exception:  # noqa: BLE001  # the failure is reported without its item
        return None


def _user_frames(exc: BaseException) -> BaseException:
    """Drop this module's frame so the traceback starts in the stage's function."""
    return drop_frames_of(__file__, exc)
