"""Pipelines: results equal a sequential run; every failure is said, nothing is left running."""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from _stages import (
    big,
    block_at,
    counting,
    crash_at,
    crash_counting_at,
    crash_once_at,
    double,
    exit_at,
    fail_at,
    fail_once_at,
    greater_than,
    is_even,
    is_multiple_of_5,
    no_truth_at,
    not_iterable,
    slow_at,
    stop_at,
    touch,
    unpicklable_at,
    upto,
    words,
)
from _support import Handshake
from conftest import running_strays, stray_processes, wait_gone

from pool import FailedItem, Pipeline, SerializationError, StageStats, TaskTimeout, WorkerLost

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def sequential(source: Any, *stages: tuple[str, Any]) -> list[Any]:
    """What a pipeline must yield, computed in this process."""
    items = list(source)
    for kind, fn in stages:
        if kind == "map":
            items = [fn(x) for x in items]
        elif kind == "filter":
            items = [x for x in items if fn(x)]
        else:
            items = [y for x in items for y in fn(x)]
    return items


def build(source: Any, *stages: tuple[str, Any], workers: int = 1, **options: Any) -> Pipeline[Any]:
    pipe: Pipeline[Any] = Pipeline(source, **options)
    for kind, fn in stages:
        pipe = getattr(pipe, kind)(fn, workers=workers)
    return pipe


CHAINS = {
    "divisible by 2 then 5": (("filter", is_even), ("filter", is_multiple_of_5)),
    "map filter flat_map": (("map", double), ("filter", is_multiple_of_5), ("flat_map", upto)),
    "flat_map then map": (("flat_map", upto), ("map", double)),
}


# --- results --------------------------------------------------------------------


def test_the_classic_chain_yields_multiples_of_ten() -> None:
    assert list(Pipeline(range(100)).filter(is_even).filter(is_multiple_of_5)) == list(range(0, 100, 10))


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("size", [0, 1, 5000])
def test_ordered_results_equal_a_sequential_run(chain: str, workers: int, size: int) -> None:
    stages = CHAINS[chain]
    assert list(build(range(size), *stages, workers=workers)) == sequential(range(size), *stages)


@pytest.mark.parametrize("chain", list(CHAINS))
def test_unordered_results_are_the_same_items(chain: str) -> None:
    stages = CHAINS[chain]
    got = list(build(iter(range(3000)), *stages, workers=2, ordered=False))
    assert sorted(got) == sorted(sequential(range(3000), *stages))


@pytest.mark.parametrize("stages", [0, 1, 2])
def test_a_buffer_of_one_item_still_flows(stages: int) -> None:
    # The chunk the loop is consuming fills the buffer alone: the pipeline
    # must read on rather than wait for the loop, which waits for it.
    pipe: Pipeline[int] = Pipeline(range(30), buffer=1)
    for _ in range(stages):
        pipe = pipe.map(double)
    assert list(pipe) == [x * 2**stages for x in range(30)]


def test_items_larger_than_the_byte_limit_still_flow() -> None:
    from pool import _pipeline

    pipe = Pipeline(range(6)).map(functools.partial(big, 1000))
    original = _pipeline.DEFAULT_BUFFER_BYTES
    _pipeline.DEFAULT_BUFFER_BYTES = 100  # each source item's chunk alone is over it
    try:
        assert [len(b) for b in pipe] == [1000] * 6
    finally:
        _pipeline.DEFAULT_BUFFER_BYTES = original


def test_a_small_buffer_gives_the_same_results() -> None:
    stages = CHAINS["map filter flat_map"]
    assert list(build(range(2000), *stages, workers=2, buffer=3)) == sequential(range(2000), *stages)


def test_a_pipeline_without_stages_yields_its_source_objects_themselves() -> None:
    lock = threading.Lock()
    items = ["a", lock, ["b"]]
    got = list(Pipeline(items))
    assert got == items and all(g is i for g, i in zip(got, items))  # noqa: B905


def test_chunks_grow_even_behind_a_filter_that_lets_almost_nothing_through() -> None:
    pipe = Pipeline(range(20_000)).filter(functools.partial(greater_than, 19_990)).map(double)
    assert list(pipe) == [2 * x for x in range(19_991, 20_000)]
    assert pipe._run is not None
    chunks = next(pipe._run._pools[0]._ids)  # tasks the first stage was given
    assert chunks < 200, chunks


def test_text_flows_through_lambdas_and_builtins() -> None:
    lines = ["the quick brown fox", "", "jumps over the lazy dog"] * 50
    pipe = Pipeline(lines).flat_map(words, workers=2).map(str.upper).filter(lambda w: len(w) > 3)
    assert list(pipe) == [w.upper() for line in lines for w in line.split() if len(w) > 3]


def test_each_runs_for_every_item_and_passes_nothing_on(tmp_path: Path) -> None:
    pipe = Pipeline(range(50)).map(double).each(functools.partial(touch, str(tmp_path)), workers=2)
    assert pipe.run() == 0
    assert sorted(int(name) for name in os.listdir(tmp_path)) == list(range(0, 100, 2))


def test_stats_count_what_each_stage_did() -> None:
    pipe = Pipeline(range(100), on_error="skip").map(double).filter(is_multiple_of_5, name="fives")
    pipe = pipe.map(functools.partial(fail_at, 40))
    assert list(pipe) == [x for x in range(0, 200, 10) if x != 40]
    first, fives, last = pipe.stats()
    assert isinstance(first, StageStats)
    assert (first.name, first.items_in, first.items_out, first.failed) == ("double", 100, 100, 0)
    assert (fives.name, fives.items_in, fives.items_out) == ("fives", 100, 20)
    assert (last.name, last.items_in, last.items_out, last.failed) == ("fail_at", 20, 19, 1)
    assert all(s.workers == 1 and s.restarts == 0 and s.busy_seconds >= 0 for s in pipe.stats())


def test_stats_before_the_run_are_zero() -> None:
    pipe = Pipeline(range(3)).map(double)
    assert pipe.stats() == [StageStats("double", 1, 0, 0, 0, 0, 0.0, 0)]


def test_a_pipeline_runs_once() -> None:
    pipe = Pipeline(range(3)).map(double)
    assert list(pipe) == [0, 2, 4]
    with pytest.raises(RuntimeError, match="already ran"):
        iter(pipe)


def test_adding_a_stage_leaves_the_original_pipeline_alone() -> None:
    base = Pipeline(range(5)).map(double)
    longer = base.filter(is_multiple_of_5)
    assert len(base.stats()) == 1 and len(longer.stats()) == 2
    assert list(longer) == [0]


# --- failures -------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 2])
def test_an_exception_in_any_stage_stops_the_pipeline_and_is_raised(position: int) -> None:
    stages: list[tuple[str, Any]] = [("map", double), ("map", double), ("map", double)]
    stages[position] = ("map", functools.partial(fail_at, 7 * 2**position))
    pipe = build(range(1000), *stages)
    with pytest.raises(ValueError, match="is bad") as info:
        list(pipe)
    notes = getattr(info.value, "__notes__", [])
    assert any("stage 'fail_at'" in note and "item 7 of the source" in note for note in notes), notes


def test_skip_drops_failed_items_and_counts_them() -> None:
    pipe = Pipeline(range(20), on_error="skip").map(functools.partial(fail_at, 7)).map(double)
    assert list(pipe) == [2 * x for x in range(20) if x != 7]
    assert [s.failed for s in pipe.stats()] == [1, 0]


def test_collect_yields_a_record_in_place_of_the_failed_item() -> None:
    pipe = Pipeline(range(10), on_error="collect").map(double).map(functools.partial(fail_at, 6))
    got = list(pipe)
    assert got[:3] + got[4:] == [0, 2, 4, 8, 10, 12, 14, 16, 18]
    record = got[3]
    assert isinstance(record, FailedItem)
    assert (record.stage, record.position, record.item) == ("fail_at", 3, 6)
    assert isinstance(record.error, ValueError) and "item 6 is bad" in str(record.error)


def test_each_item_runs_once_when_another_in_its_chunk_raises(tmp_path: Path) -> None:
    pipe = Pipeline(range(3000), on_error="collect").map(functools.partial(fail_once_at, 2500, str(tmp_path)))
    got = list(pipe)
    (record,) = [g for g in got if isinstance(g, FailedItem)]
    assert isinstance(record.error, ValueError) and record.position == 2500
    assert len(os.listdir(tmp_path)) == 3000
    assert pipe.stats()[0].retried == 0


@pytest.mark.parametrize("kind", ["map", "filter", "each"])
def test_stop_iteration_from_a_function_fails_its_item_only(kind: str) -> None:
    pipe = getattr(Pipeline(range(20), on_error="collect"), kind)(functools.partial(stop_at, 3))
    got = list(pipe)
    (record,) = [g for g in got if isinstance(g, FailedItem)]
    assert record.position == 3 and isinstance(record.error, RuntimeError)
    assert "StopIteration" in str(record.error)
    (stats,) = pipe.stats()
    assert (stats.items_in, stats.failed) == (20, 1)
    kept = [g for g in got if not isinstance(g, FailedItem)]
    expected = {
        "map": [x for x in range(20) if x != 3],
        "filter": [x for x in range(1, 20) if x != 3],
        "each": [],
    }
    assert kept == expected[kind]


def test_a_filter_result_whose_truth_raises_fails_its_item_only() -> None:
    got = list(Pipeline(range(10), on_error="collect").filter(functools.partial(no_truth_at, 4)))
    (record,) = [g for g in got if isinstance(g, FailedItem)]
    assert record.position == 4 and "ambiguous" in str(record.error)
    assert [g for g in got if not isinstance(g, FailedItem)] == [0, 2, 6, 8]


def test_collect_keeps_order_with_several_failures_in_several_stages() -> None:
    pipe = Pipeline(range(30), on_error="collect")
    pipe = pipe.map(functools.partial(fail_at, 4), workers=2).map(functools.partial(fail_at, 20))
    got = list(pipe)
    assert [g.position if isinstance(g, FailedItem) else g for g in got] == list(range(30))
    assert [g.stage for g in got if isinstance(g, FailedItem)] == ["fail_at", "fail_at"]


@pytest.mark.parametrize("how", ["os._exit", "segfault", "sigkill"])
def test_a_crashed_worker_fails_only_its_item_and_is_replaced(how: str) -> None:
    pipe = Pipeline(range(40), on_error="collect").map(double).map(functools.partial(crash_at, 26, how))
    got = list(pipe)
    lost = [g for g in got if isinstance(g, FailedItem)]
    assert [g for g in got if not isinstance(g, FailedItem)] == [2 * x for x in range(40) if x != 13]
    assert len(lost) == 1 and lost[0].position == 13 and lost[0].item == 26
    assert isinstance(lost[0].error, WorkerLost)
    assert pipe.stats()[1].restarts >= 1


def test_a_crash_raises_worker_lost_by_default(start_method: str) -> None:
    pipe = Pipeline(range(10), mp_context=start_method).map(functools.partial(crash_at, 5, "sigkill"))
    with pytest.raises(WorkerLost) as info:
        list(pipe)
    assert info.value.signal == signal.SIGKILL
    assert any("item 5 of the source" in note for note in info.value.__notes__)


def test_retries_rerun_an_item_whose_worker_died(tmp_path: Path) -> None:
    crash_once = functools.partial(crash_once_at, 3, str(tmp_path / "marker"))
    pipe = Pipeline(range(10)).map(crash_once, retries=1)
    assert list(pipe) == list(range(10))
    (stats,) = pipe.stats()
    assert stats.retried >= 1 and stats.restarts >= 1 and stats.failed == 0


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_an_item_that_always_kills_its_worker_runs_retries_plus_one_times(
    tmp_path: Path, retries: int
) -> None:
    # Its run inside a chunk counts; with retries=0 it runs once more, alone,
    # to find which item of the chunk to blame.
    crasher = functools.partial(crash_counting_at, 2500, str(tmp_path))
    pipe = Pipeline(range(3000), on_error="collect").map(crasher, retries=retries)
    got = list(pipe)
    (record,) = [g for g in got if isinstance(g, FailedItem)]
    assert record.position == 2500 and isinstance(record.error, WorkerLost)
    assert len(got) == 3000
    assert len(os.listdir(tmp_path)) == max(2, retries + 1)


def test_a_stuck_item_times_out_alone() -> None:
    pipe = Pipeline(range(12), on_error="collect").map(functools.partial(block_at, 5, None), timeout=1.0)
    got = list(pipe)
    assert [g for g in got if not isinstance(g, FailedItem)] == [x for x in range(12) if x != 5]
    (record,) = [g for g in got if isinstance(g, FailedItem)]
    assert record.position == 5 and isinstance(record.error, TaskTimeout)


def test_an_item_past_its_timeout_fails_even_when_its_chunk_was_not_stopped() -> None:
    # Chunks of 4 may run twice the timeout; the item alone may not.
    slow = functools.partial(slow_at, 2, 1.5)
    got = list(Pipeline(range(8), on_error="collect", chunksize=4).map(slow, timeout=1.0))
    assert [g for g in got if not isinstance(g, FailedItem)] == [0, 1, 3, 4, 5, 6, 7]
    assert isinstance(got[2], FailedItem) and isinstance(got[2].error, TaskTimeout)


def test_system_exit_in_a_stage_fails_the_item_not_the_worker() -> None:
    pipe = Pipeline(range(6), on_error="collect").map(functools.partial(exit_at, 2))
    got = list(pipe)
    assert isinstance(got[2], FailedItem) and isinstance(got[2].error, SystemExit)
    assert pipe.stats()[0].restarts == 0


def test_an_output_that_cannot_be_pickled_fails_alone() -> None:
    pipe = Pipeline(range(5), on_error="collect").map(functools.partial(unpicklable_at, 3)).map(double)
    got = list(pipe)
    assert got[:3] == [0, 2, 4] and got[4] == 8
    assert isinstance(got[3], FailedItem) and isinstance(got[3].error, SerializationError)
    assert "position 3" in str(got[3].error)
    first, second = pipe.stats()
    assert (first.items_out, first.failed, second.items_in) == (4, 1, 4)


def test_a_source_item_that_cannot_be_pickled_fails_alone() -> None:
    lock = threading.Lock()
    got = list(Pipeline([1, lock, 3], on_error="collect").map(double))
    assert got[0] == 2 and got[2] == 6
    assert isinstance(got[1], FailedItem) and isinstance(got[1].error, SerializationError)
    with pytest.raises(SerializationError, match="position 1"):
        list(Pipeline([1, lock, 3]).map(double))


def test_a_flat_map_that_returns_no_iterable_fails_the_item() -> None:
    with pytest.raises(TypeError, match="iterable"):
        list(Pipeline([1, 2]).flat_map(not_iterable))


class SourceBroke(BaseException):
    pass


def test_a_base_exception_from_the_source_comes_after_the_items_before_it() -> None:
    def source() -> Any:
        yield from range(3)
        raise SourceBroke

    got = []
    with pytest.raises(SourceBroke):
        for item in Pipeline(source()).map(double):
            got.append(item)
    assert got == [0, 2, 4]


def test_a_generator_source_is_closed_when_the_pipeline_stops_early() -> None:
    closed = threading.Event()

    def source() -> Any:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    for _ in Pipeline(source()).map(double):
        break
    assert closed.wait(60)


def test_an_error_in_the_source_comes_after_the_items_before_it() -> None:
    def source() -> Any:
        yield from range(5)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone") as info:
        for item in Pipeline(source()).map(double):
            got.append(item)
    assert got == [0, 2, 4, 6, 8]
    assert any("after 5 items" in note for note in info.value.__notes__)


# --- stopping -------------------------------------------------------------------


def test_breaking_out_stops_every_stage_even_a_stuck_one(tmp_path: Path) -> None:
    handshake = Handshake(tmp_path)
    stuck = functools.partial(block_at, 2, handshake.path)  # source item 1, doubled
    # A buffer of one item: item 1 is read once the loop holds item 0, so it
    # cannot get stuck ahead of it (the first stage's workers finish in any order).
    pipe = Pipeline(itertools.count(), buffer=1).map(double, workers=2).map(stuck)
    got = []
    for item in pipe:
        got.append(item)
        if item == 0:
            handshake.wait()  # the last stage is now stuck on an item
            break
    assert got == [0]
    assert not running_strays()


def test_an_exception_in_the_loop_body_stops_the_pipeline() -> None:
    with pytest.raises(KeyError):
        for _ in Pipeline(itertools.count()).map(double):
            raise KeyError("caller's own error")
    assert not running_strays()


def test_an_endless_source_is_read_only_as_fast_as_results_are_taken() -> None:
    reads = [0]
    buffer = 64
    pipe = Pipeline(counting(None, reads), buffer=buffer).map(double, workers=2).map(double)
    most_ahead = 0
    for taken, item in enumerate(pipe, 1):
        assert item == 4 * (taken - 1)
        most_ahead = max(most_ahead, reads[0] - taken)
        if taken == 3000:
            break
    # What the loop has not taken yet, the chunk in its hands included; one
    # chunk more only when the one in its hands is all there is.
    assert most_ahead <= 2 * buffer, most_ahead


def test_an_iterator_dropped_before_its_first_item_started_nothing() -> None:
    reads = [0]
    pipe = Pipeline(counting(None, reads)).map(double)
    assert list(zip([], pipe)) == []  # noqa: B905  # zip asks iter() but never next()
    assert reads == [0]
    assert not running_strays()
    assert not [t for t in threading.enumerate() if t.name.startswith("pool-")]


def test_closing_from_a_stage_thread_hands_the_stop_to_a_thread_of_its_own() -> None:
    # The garbage collector may finalize a dropped pipeline in any thread,
    # a stage's supervisor thread among them; joining there would hang.
    pipe = Pipeline(itertools.count()).map(double, workers=2).map(double)
    iterator = iter(pipe)
    assert next(iterator) == 0
    run = pipe._run
    assert run is not None
    closed = threading.Event()

    def close_here(_: object) -> None:
        run.close()
        closed.set()

    run._pools[1].submit(os.getpid).add_done_callback(close_here)
    assert closed.wait(60)
    for thread in threading.enumerate():
        if thread.name == "pool-pipeline-closer":
            thread.join(60)
    for stage_pool in run._pools:
        stage_pool._supervisor.join(60)
        assert not stage_pool._supervisor.alive
    assert not wait_gone(stray_processes(), timeout=30)


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Pipeline(5), TypeError, "source must be iterable"),
        (lambda: Pipeline([], on_error="ignore"), ValueError, "on_error must be one of"),
        (lambda: Pipeline([], buffer=0), ValueError, "buffer must be >= 1"),
        (lambda: Pipeline([], ordered="yes"), TypeError, "ordered must be"),
        (lambda: Pipeline([]).map(5), TypeError, "fn must be callable"),
        (lambda: Pipeline([]).map(double, workers=0), ValueError, "workers must be >= 1"),
        (lambda: Pipeline([]).filter(double, timeout=-1), ValueError, "timeout must be > 0"),
        (lambda: Pipeline([]).each(double, retries=-1), ValueError, "retries must be >= 0"),
        (lambda: Pipeline([]).map(double, name=""), TypeError, "name must be"),
    ],
)
def test_bad_arguments_are_named(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_a_function_that_cannot_be_pickled_fails_when_the_stage_is_added() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="cannot pickle the function"):
        Pipeline([1]).map(lambda x: (lock, x))


# --- Ctrl-C ---------------------------------------------------------------------


def test_ctrl_c_stops_every_stage(tmp_path: Path) -> None:
    handshake = Handshake(tmp_path)
    script = textwrap.dedent(
        f"""
        import functools, itertools
        from pool import Pipeline
        from _stages import block_at, double
        pipe = Pipeline(itertools.count()).map(double, workers=2).map(
            functools.partial(block_at, 10, {handshake.path!r}))
        for item in pipe:
            pass
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
    caller = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        stuck = int(handshake.wait().split()[0])
        family = psutil.Process(caller.pid).children(recursive=True)
        assert stuck in {p.pid for p in family}
        start = time.monotonic()
        caller.send_signal(signal.SIGINT)
        _, stderr = caller.communicate(timeout=60)
        assert b"KeyboardInterrupt" in stderr, stderr.decode()
        assert caller.returncode != 0
        assert time.monotonic() - start < 30
        assert not wait_gone(family, timeout=10)
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.communicate()
