"""map, imap, imap_unordered and starmap: results, laziness, errors, timeouts, cancellation.

Functions that run in workers come from ``_tasks`` or are lambdas/closures
defined inside the tests (cloudpickle ships those by value), never plain
module-level functions of this file.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _tasks import (
    MismatchError,
    add,
    block_forever,
    die_once,
    identity,
    raise_mismatch,
    sleep_then,
    square,
)

from pool import Pool, SerializationError, TaskTimeout, WorkerLost
from pool._mapping import MAX_CHUNK, WINDOW_PER_WORKER

# Generous wait for anything that should be quick: only an alarm.
RESULT_TIMEOUT = 60.0

LAZY_METHODS = ["imap", "imap_unordered", "starmap"]
ALL_METHODS = ["map", *LAZY_METHODS]


def _call(p: Pool, method: str, fn: Any, iterable: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
    """Call one of the four mapping methods with a single iterable."""
    return getattr(p, method)(fn, iterable, **kwargs)  # type: ignore[no-any-return]


def _gen(values: Iterable[Any]) -> Iterator[Any]:
    """An unsized iterable over ``values`` (a generator has no len())."""
    yield from values


# --- map equals the builtin map ------------------------------------------------------

INPUTS: dict[str, Callable[[], Iterable[int]]] = {
    "list": lambda: list(range(57)),
    "range": lambda: range(-5, 300, 3),
    "tuple": lambda: tuple(range(23)),
    "generator": lambda: _gen(range(131)),
    "generator-of-one": lambda: _gen([4]),
    "empty-list": lambda: [],
    "empty-range": lambda: range(0),
    "empty-tuple": lambda: (),
    "empty-generator": lambda: _gen(()),
}


@pytest.mark.parametrize("make", INPUTS.values(), ids=INPUTS.keys())
def test_map_equals_builtin_map(pool: Pool, make: Callable[[], Iterable[int]]) -> None:
    assert list(pool.map(square, make())) == list(map(square, make()))


MULTI: dict[str, tuple[Callable[..., Any], Callable[[], tuple[Iterable[Any], ...]]]] = {
    "second-shorter": (add, lambda: ([1, 2, 3], [10, 20])),
    "first-shorter": (add, lambda: (range(2), range(100, 110))),
    "sized-and-infinite": (add, lambda: (range(5), itertools.count(1000))),
    "generator-and-list": (add, lambda: (_gen(range(9)), [7] * 4)),
    "both-generators": (add, lambda: (_gen(range(30)), _gen(range(0, 60, 2)))),
    "three": (lambda a, b, c: (a, b, c), lambda: ("abcd", range(10), [True, False, None])),
    "one-empty": (add, lambda: ([1, 2, 3], [])),
}


@pytest.mark.parametrize(("fn", "make"), MULTI.values(), ids=MULTI.keys())
def test_map_zips_iterables_to_the_shortest(
    pool: Pool, fn: Callable[..., Any], make: Callable[[], tuple[Iterable[Any], ...]]
) -> None:
    assert list(pool.map(fn, *make())) == list(map(fn, *make()))


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("kind", ["list", "generator"])
def test_explicit_chunksize_gives_the_same_results(
    pool: Pool, method: str, chunksize: int, kind: str
) -> None:
    items: Iterable[Any] = [(i, 1) for i in range(100)] if method == "starmap" else list(range(100))
    expected = [i + 1 for i in range(100)] if method == "starmap" else [i * i for i in range(100)]
    if kind == "generator":
        items = _gen(items)
    fn = add if method == "starmap" else square
    results = list(_call(pool, method, fn, items, chunksize=chunksize))
    if method == "imap_unordered":
        assert sorted(results) == expected
    else:
        assert results == expected


@pytest.mark.parametrize(
    ("chunksize", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_bad_chunksize_raises_at_the_call(
    pool: Pool, method: str, chunksize: object, error: type[Exception]
) -> None:
    pulled = []

    def source() -> Iterator[int]:
        for i in range(10):
            pulled.append(i)
            yield i

    with pytest.raises(error, match="chunksize"):
        _call(pool, method, square, source(), chunksize=chunksize)
    assert pulled == [], "the input was read before the argument was checked"


def test_map_without_an_iterable_raises_type_error(pool: Pool) -> None:
    with pytest.raises(TypeError, match="iterable"):
        pool.map(square)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("fn", [None, 42, "square"])
def test_non_callable_fn_raises_type_error(pool: Pool, method: str, fn: object) -> None:
    with pytest.raises(TypeError, match="callable"):
        _call(pool, method, fn, [1, 2, 3])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_non_iterable_input_raises_type_error_at_the_call(pool: Pool, method: str) -> None:
    with pytest.raises(TypeError):
        _call(pool, method, square, 5)


# --- imap, imap_unordered, starmap ------------------------------------------------------


def test_imap_keeps_input_order_when_later_items_finish_first(pool: Pool) -> None:
    # Earlier items sleep longer (simulated work), so completion order is
    # roughly the reverse of input order; imap must still yield in input order.
    results = list(pool.imap(lambda x: sleep_then((12 - x) * 0.01, x), range(12), chunksize=1))
    assert results == list(range(12))


@pytest.mark.parametrize("chunksize", [None, 1, 5])
def test_imap_unordered_yields_the_same_multiset(pool: Pool, chunksize: int | None) -> None:
    items = [i % 7 for i in range(200)]  # duplicates: a multiset, not a set
    results = list(pool.imap_unordered(square, items, chunksize=chunksize))
    assert sorted(results) == sorted(map(square, items))


def test_imap_unordered_yields_in_completion_order(pool: Pool) -> None:
    # Item 0 blocks until its task timeout kills it; the others are quick.
    # Deterministic: item 0 cannot finish before its worker is killed, so every
    # other result is yielded first, then item 0's TaskTimeout.
    def work(x: int) -> int:
        if x == 0:
            block_forever()
        return x

    it = pool.options(timeout=2).imap_unordered(work, range(6), chunksize=1)
    first = [next(it) for _ in range(5)]
    assert sorted(first) == [1, 2, 3, 4, 5]
    with pytest.raises(TaskTimeout):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_starmap(pool: Pool) -> None:
    assert list(pool.starmap(add, [(1, 2), (3, 4)])) == [3, 7]
    assert list(pool.starmap(add, _gen((i, -i) for i in range(50)))) == [0] * 50
    assert list(pool.starmap(add, [])) == []
    assert list(pool.starmap(lambda *args: args, [(), (1,), (1, 2, 3)])) == [(), (1,), (1, 2, 3)]


# --- laziness: constant memory on an endless input ---------------------------------------

TAKE = 1000


class CountingSource:
    """An endless, unsized source that counts how many items were pulled.

    It fails loudly (instead of looping forever) once more than ``limit``
    items were pulled, so an eager implementation fails fast.
    """

    def __init__(self, limit: int, star: bool) -> None:
        self.pulled = 0
        self.limit = limit
        self.star = star

    def __iter__(self) -> Iterator[Any]:
        for i in itertools.count():
            if self.pulled >= self.limit:
                raise AssertionError(f"pulled more than {self.limit} items from an endless input")
            self.pulled += 1
            yield (i, i) if self.star else i


@pytest.mark.parametrize("chunksize", [None, 1, 50])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_endless_input_is_read_lazily(pool: Pool, method: str, chunksize: int | None) -> None:
    # What may have been pulled when TAKE results were taken, per _mapping:
    # * the chunks whose results were all yielded: at most TAKE items;
    # * the chunk being yielded from: at most one chunk, minus one item;
    # * the window of chunks in flight, refilled each time a chunk is taken
    #   off it: WINDOW_PER_WORKER * workers chunks.
    # A chunk holds at most MAX_CHUNK items when the pool picks the size (the
    # adaptive Chunker's cap for an unsized input), else `chunksize`. So the
    # bound is TAKE + (window + 1) * largest chunk, whatever the machine's
    # speed, and it does not grow with the number of results taken.
    largest_chunk = MAX_CHUNK if chunksize is None else chunksize
    window = WINDOW_PER_WORKER * pool.max_workers
    bound = TAKE + (window + 1) * largest_chunk
    source = CountingSource(limit=bound, star=method == "starmap")
    fn = add if method == "starmap" else square

    results = list(itertools.islice(_call(pool, method, fn, iter(source), chunksize=chunksize), TAKE))

    assert len(results) == TAKE
    if method == "starmap":
        assert results == [2 * i for i in range(TAKE)]
    elif method == "imap_unordered":
        roots = [math.isqrt(r) for r in results]
        assert all(root * root == r for root, r in zip(roots, results, strict=True))
        assert len(set(roots)) == TAKE
        assert max(roots) < source.pulled
    else:
        assert results == [i * i for i in range(TAKE)]
    assert TAKE <= source.pulled <= bound


def test_map_on_a_sized_input_starts_at_the_call(pool: Pool, tmp_path: Path) -> None:
    # Like ProcessPoolExecutor.map: every item runs even if the caller never
    # iterates. chunksize=1 makes 40 chunks, far more than a lazy window
    # (WINDOW_PER_WORKER * 2 = 8), so a lazy map would leave files missing.
    out = tmp_path / "out"
    out.mkdir()

    def touch(i: int) -> int:
        (out / str(i)).touch()
        return i

    results = pool.map(touch, range(40), chunksize=1)
    pool.shutdown(wait=True)
    assert sorted(int(f.name) for f in out.iterdir()) == list(range(40))
    assert list(results) == list(range(40))


def test_map_on_a_sized_input_runs_even_if_its_result_is_dropped(pool: Pool, tmp_path: Path) -> None:
    # ProcessPoolExecutor.map submits every item at the call, and dropping
    # the (never started) result generator cancels nothing: all 40 run. A
    # drop-in must not silently skip work a fire-and-forget map asked for.
    out = tmp_path / "out"
    out.mkdir()

    def touch(i: int) -> None:
        (out / str(i)).touch()

    pool.map(touch, range(40), chunksize=1)
    pool.shutdown(wait=True)
    assert sorted(int(f.name) for f in out.iterdir()) == list(range(40))


# --- an item that raises ----------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 1000])
@pytest.mark.parametrize("method", ["map", "imap", "map-generator"])
def test_an_item_that_raises_ends_the_map_with_its_exception(
    pool: Pool, method: str, chunksize: int | None
) -> None:
    def fn(x: int) -> int:
        if x == 10:
            raise_mismatch(x, "bad item")
        return x

    if method == "map-generator":
        it = pool.map(fn, _gen(range(20)), chunksize=chunksize)
    else:
        it = _call(pool, method, fn, range(20), chunksize=chunksize)
    results = []
    with pytest.raises(MismatchError) as info:
        for r in it:
            results.append(r)
    assert results == list(range(10))
    exc = info.value
    assert type(exc) is MismatchError
    assert (exc.code, exc.reason) == (10, "bad item")
    assert str(exc) == "code 10: bad item"
    if sys.version_info >= (3, 11):
        notes = getattr(exc, "__notes__", [])
        assert any("position 10" in note for note in notes), notes
    with pytest.raises(StopIteration):
        next(it)
    # The pool is still fine.
    assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_an_item_that_raises_in_imap_unordered(pool: Pool) -> None:
    def fn(x: int) -> int:
        if x == 10:
            raise_mismatch(x, "bad item")
        return x

    it = pool.imap_unordered(fn, range(20), chunksize=1)
    results = []
    with pytest.raises(MismatchError) as info:
        for r in it:
            results.append(r)
    assert set(results) <= set(range(20)) - {10}
    assert len(results) == len(set(results))
    assert (info.value.code, info.value.reason) == (10, "bad item")
    with pytest.raises(StopIteration):
        next(it)


def test_a_builtin_exception_keeps_its_type_and_message(pool: Pool) -> None:
    it = pool.map(lambda x: 1 // x, [4, 2, 1, 0, 5], chunksize=2)
    assert next(it) == 0
    assert next(it) == 0
    assert next(it) == 1
    with pytest.raises(ZeroDivisionError, match="division"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def _collect_until(it: Iterator[Any], error: type[BaseException], match: str) -> list[Any]:
    """The results yielded before ``it`` raises ``error``."""
    results: list[Any] = []
    with pytest.raises(error, match=match):
        for r in it:
            results.append(r)
    return results


@pytest.mark.parametrize("chunksize", [None, 1, 7])
@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered", "starmap"])
def test_an_input_that_raises_midway_loses_no_result(pool: Pool, method: str, chunksize: int | None) -> None:
    # The source fails at position 20, which is read while iterating (after
    # the first window; with chunksize=7 in the middle of a chunk). As with
    # the builtin map, every result before it comes out, then the error, and
    # the map ends there, as when an item raises: none lost, none skipped.
    star = method == "starmap"

    def source() -> Iterator[Any]:
        for i in range(20):
            yield (i, 0) if star else i
        raise LookupError("source broke")

    fn = add if star else square
    expected = list(range(20)) if star else [i * i for i in range(20)]
    it = _call(pool, method, fn, source(), chunksize=chunksize)
    before = _collect_until(it, LookupError, "source broke")
    after = list(it)
    if method == "imap_unordered":
        before.sort()
    assert before == expected, f"results lost or skipped: {before} then {after}"
    assert after == [], f"the map went on after the error: {after}"


# --- timeout --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_map_timeout_raises_timeout_error_and_the_pool_recovers(pool: Pool, kind: str) -> None:
    # The items block forever; the per-task timeout (2 s) only exists so the
    # blocked workers are killed and the fixture's shutdown can finish. The
    # map's own timeout (0.5 s) must fire well before it.
    items: Iterable[None] = [None, None, None]
    if kind == "generator":
        items = _gen(items)
    start = time.monotonic()
    it = pool.options(timeout=2).map(block_forever, items, timeout=0.5)
    with pytest.raises(concurrent.futures.TimeoutError) as info:
        next(it)
    elapsed = time.monotonic() - start
    assert not isinstance(info.value, TaskTimeout), "the task timeout fired, not the map's"
    if sys.version_info >= (3, 11):
        assert isinstance(info.value, TimeoutError)
    assert 0.45 <= elapsed < 2.0
    with pytest.raises(StopIteration):
        next(it)
    # Usable afterwards (once the blocked workers were replaced).
    assert list(pool.map(square, range(10), timeout=RESULT_TIMEOUT)) == [i * i for i in range(10)]


@pytest.mark.parametrize("timeout", [float("nan"), "1", True, [1]])
def test_map_bad_timeout_raises_at_the_call(pool: Pool, timeout: object) -> None:
    with pytest.raises((ValueError, TypeError), match="timeout"):
        pool.map(square, [1, 2], timeout=timeout)


def test_map_timeout_does_not_fire_when_results_are_in_time(pool: Pool) -> None:
    assert list(pool.map(square, range(100), timeout=RESULT_TIMEOUT)) == [i * i for i in range(100)]


# --- cancellation ------------------------------------------------------------------------------


def test_breaking_out_of_imap_cancels_the_rest(pool: Pool, tmp_path: Path) -> None:
    # Each item leaves a file when it starts. Item 0 is instant; the others
    # take 1 s (simulated work). With chunksize=1 the window holds 8 chunks,
    # and taking item 0 tops it up with item 8: 9 items submitted. When the
    # caller breaks after item 0, the two workers are each on a 1 s item, so
    # no other item can start before the break cancels the rest; only a
    # caller stalled for seconds could let more start. Without cancellation
    # all 9 would run.
    started = tmp_path / "started"
    started.mkdir()

    def work(i: int) -> int:
        (started / str(i)).touch()
        return i if i == 0 else sleep_then(1.0, i)

    taken = []
    for result in pool.imap(work, range(100), chunksize=1):
        taken.append(result)
        break
    assert taken == [0]
    # Still usable.
    assert list(pool.map(square, range(5), timeout=RESULT_TIMEOUT)) == [0, 1, 4, 9, 16]
    pool.shutdown(wait=True)
    ran = sorted(int(f.name) for f in started.iterdir())
    assert 0 in ran
    assert len(ran) <= 5, f"items kept starting after the break: {ran}"
    assert max(ran) <= 8


# --- pickling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "chunksize", "position"),
    [
        ([0, 1, "lock", 3], None, 2),
        (["lock", 1, 2], 1, 0),
        ([0, 1, 2, 3, 4, "lock", 6, 7], 10, 5),
        ([0, 1, 2, 3, 4, "lock", 6, 7], 3, 5),
    ],
)
@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered"])
def test_unpicklable_item_raises_serialization_error_naming_its_position(
    pool: Pool, method: str, items: list[Any], chunksize: int | None, position: int
) -> None:
    items = [threading.Lock() if item == "lock" else item for item in items]
    # It may be raised at the call (as ProcessPoolExecutor.map does) or after
    # the results before it; either way no other result may come out.
    before: list[Any] = []
    with pytest.raises(SerializationError, match=rf"\bitem {position}\b") as info:
        it = _call(pool, method, identity, items, chunksize=chunksize)
        for r in it:
            before.append(r)
    assert "lock" in str(info.value)
    if method == "imap_unordered":
        before.sort()
    assert before == items[: len(before)]
    if before:  # the error came while iterating: the map ended there
        assert list(it) == []
    assert list(pool.map(square, range(5), timeout=RESULT_TIMEOUT)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("chunksize", [None, 1, 7])
@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered"])
def test_unpicklable_item_late_in_a_lazy_input(pool: Pool, method: str, chunksize: int | None) -> None:
    # Position 20 is read while iterating, after the first window. The error
    # names it; every result before it comes out first, and the map ends
    # there, as when an item raises: none lost, none skipped.
    def source() -> Iterator[Any]:
        for i in range(40):
            yield threading.Lock() if i == 20 else i

    it = _call(pool, method, identity, source(), chunksize=chunksize)
    before = _collect_until(it, SerializationError, r"\bitem 20\b")
    after = list(it)
    if method == "imap_unordered":
        before.sort()
    assert before == list(range(20)), f"results lost or skipped: {before} then {after}"
    assert after == [], f"the map went on after the error: {after}"


# --- functions and options ------------------------------------------------------------------------


def test_lambdas_and_closures_work(pool: Pool) -> None:
    offset = 100

    def shifted(x: int) -> int:
        return x + offset

    assert list(pool.map(lambda x: x * 3, range(10))) == [x * 3 for x in range(10)]
    assert list(pool.map(shifted, range(10))) == [x + 100 for x in range(10)]
    assert list(pool.imap(lambda s: s.upper(), _gen("abc"))) == ["A", "B", "C"]
    assert sorted(pool.imap_unordered(shifted, range(5))) == [100, 101, 102, 103, 104]
    assert list(pool.starmap(lambda a, b: f"{a}{b}{offset}", [("x", 1), ("y", 2)])) == ["x1100", "y2100"]
    assert list(pool.map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6])) == [4, 10, 18]


def test_options_retries_map(pool: Pool, tmp_path: Path) -> None:
    assert list(pool.options(retries=1).map(square, range(50))) == [i * i for i in range(50)]
    # The retry really applies to map's chunks: the first attempt kills its
    # worker, the second succeeds.
    marker = str(tmp_path / "died-once")
    assert list(pool.options(retries=1).map(die_once, [marker])) == ["survived"]
    # Without retries the same death fails the map.
    other = str(tmp_path / "died-once-more")
    with pytest.raises(WorkerLost):
        list(pool.map(die_once, [other]))


def test_options_timeout_imap(pool: Pool) -> None:
    view = pool.options(timeout=5)
    assert list(view.imap(square, range(50))) == [i * i for i in range(50)]
    assert list(view.imap(square, _gen(range(50)), chunksize=4)) == [i * i for i in range(50)]
    # The task timeout applies to imap's chunks too.
    with pytest.raises(TaskTimeout):
        list(pool.options(timeout=0.5).imap(block_forever, [None]))
    assert list(view.imap(square, range(5))) == [0, 1, 4, 9, 16]
