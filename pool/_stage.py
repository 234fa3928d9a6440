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

import os
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._errors import SerializationError
from ._serialize import dumps, dumps_exception, loads

MAP = "map"
FILTER = "filter"
FLAT_MAP = "flat_map"
EACH = "each"
KINDS = (MAP, FILTER, FLAT_MAP, EACH)

# A failure as the worker reports it: (position, item bytes or None, exception bytes).
Failure = tuple[int, "bytes | None", bytes]

_kind: str | None = None
_fn: Callable[..., Any] | None = None


def install(kind: str, fn: Callable[..., Any]) -> None:
    """The stage pool's initializer: remember what this worker runs."""
    global _kind, _fn
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}")
    _kind, _fn = kind, fn


def positions_of(values: Sequence[int]) -> Sequence[int]:
    """Positions in their most compact picklable form: a range when consecutive."""
    if isinstance(values, (range, array)):
        return values
    count = len(values)
    if count and values[-1] - values[0] == count - 1 and _consecutive(values):
        return range(values[0], values[0] + count)
    return array("q", values)


def _consecutive(values: Sequence[int]) -> bool:
    first = values[0]
    return all(v == first + i for i, v in enumerate(values))


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
    outputs: list[Any] = []
    failures: list[Failure] = []
    done = 0
    if kind == MAP:
        # The common case: every item maps and the positions pass through
        # unchanged. On the first raise, go on item by item after it.
        append = outputs.append
        try:
            for item in items:
                append(fn(item))
        except BaseException as exc:  # noqa: BLE001  # SystemExit too: the item fails, not the worker
            done = len(outputs)
            error = dumps_exception(_user_frames(exc))
            failures.append((positions[done], _dumps_or_none(items[done]), error))
            done += 1
        else:
            return _finish(positions, outputs, [], start, len(items))
    out_positions = list(positions[: len(outputs)])
    for position, item in zip(positions[done:], items[done:]):  # noqa: B905  # packed together
        try:
            if kind == MAP:
                outputs.append(fn(item))
                out_positions.append(position)
            elif kind == FILTER:
                if fn(item):
                    outputs.append(item)
                    out_positions.append(position)
            elif kind == FLAT_MAP:
                produced = list(_iterate(fn(item)))  # all or nothing, if it raises midway
                outputs.extend(produced)
                out_positions.extend([position] * len(produced))
            else:
                fn(item)
        except BaseException as exc:  # noqa: BLE001  # SystemExit too: the item fails, not the worker
            failures.append((position, _dumps_or_none(item), dumps_exception(_user_frames(exc))))
    return _finish(out_positions, outputs, failures, start, len(items))


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
    kept_positions: list[int] = []
    kept: list[Any] = []
    for position, output in zip(positions, outputs):  # noqa: B905  # built together
        try:
            dumps(output)
        except Exception as exc:  # noqa: BLE001  # this output fails, with a clear error
            error = SerializationError(
                f"cannot pickle the output for the item at position {position}, "
                f"of type {type(output).__qualname__}: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            failures.append((position, None, dumps_exception(error)))
        else:
            kept_positions.append(position)
            kept.append(output)
    failures.sort(key=lambda failure: failure[0])
    return pack(kept_positions, kept), len(kept)


def _dumps_or_none(item: object) -> bytes | None:
    try:
        return dumps(item)
    except Exception:  # noqa: BLE001  # the failure is reported without its item
        return None


def _user_frames(exc: BaseException) -> BaseException:
    """Drop this module's frame so the traceback starts in the stage's function."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc.__traceback__ = tb
    return exc
