"""Pool.stats, Pool.pending and Pool.clear: counts, worker states, the queue."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import signal
import threading
from pathlib import Path

import psutil
import pytest
from _support import Handshake, worker_pids
from _tasks import (
    always_die,
    announce_then,
    block_forever,
    die_once,
    raise_value_error,
    square,
)
from conftest import close

from pool import Pool, PoolStats, TaskTimeout, WorkerLost, WorkerStats


def _name(fn: object) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"  # type: ignore[attr-defined]


def _balanced(stats: PoolStats) -> bool:
    """Every task submitted is in exactly one place."""
    ended = stats.done + sum(stats.failed.values()) + stats.cancelled
    return stats.submitted == stats.queued + stats.running + ended


def test_counts_after_a_mix_of_outcomes(handshake: Handshake, tmp_path: Path) -> None:
    """One worker, so each outcome and each restart happens in a known order."""
    p = Pool(1)
    try:
        # Cancels, first: a fresh worker never takes a task behind a running one.
        blocker = p.submit(block_forever, handshake.path)
        handshake.wait()
        by_caller, by_pool = p.submit(square, 1), p.submit(square, 2)
        assert by_caller.cancel()  # in this thread; the supervisor is not told
        assert p.cancel(by_pool)
        assert p.cancel(blocker)  # running: its worker is killed and replaced (restart 1)
        # Results: five calls and a map of three chunks.
        assert [f.result(timeout=60) for f in [p.submit(square, i) for i in range(5)]] == [0, 1, 4, 9, 16]
        assert list(p.map(square, range(3), chunksize=1)) == [0, 1, 4]
        # Raises.
        for _ in range(2):
            with pytest.raises(ValueError):
                p.submit(raise_value_error, "no").result(timeout=60)
        # A worker SIGKILLed mid-task, the task retried on a new one (restart 2).
        retry = p.options(retries=1)
        assert retry.submit(die_once, str(tmp_path / "marker")).result(timeout=60) == "survived"
        # Killed on every attempt: lost after its retry (restarts 3 and 4).
        with pytest.raises(WorkerLost, match="after 2 attempts"):
            retry.submit(always_die).result(timeout=60)
        # Past its timeout: killed (restart 5, seen once the next task ran).
        with pytest.raises(TaskTimeout):
            p.options(timeout=0.5).submit(block_forever).result(timeout=60)
        assert p.submit(square, 3).result(timeout=60) == 9

        stats = p.stats()
        assert stats.submitted == 3 + 5 + 3 + 2 + 1 + 1 + 1 + 1
        assert (stats.queued, stats.running) == (0, 0)
        assert stats.done == 5 + 3 + 1 + 1
        assert stats.failed == {"ValueError": 2, "WorkerLost": 1, "TaskTimeout": 1}
        assert stats.cancelled == 3
        assert stats.retried == 2
        assert stats.restarts == 5
        assert _balanced(stats)
        (worker,) = stats.workers
        assert (worker.state, worker.task, worker.tasks_done) == ("idle", None, 1)
        assert worker.pid == worker_pids(p)[0]
    finally:
        close(p)


def test_a_busy_worker_shows_its_task(pool: Pool, handshake: Handshake) -> None:
    future = pool.submit(block_forever, handshake.path)
    pid = handshake.wait_pid()
    stats = pool.stats()
    (busy,) = [w for w in stats.workers if w.pid == pid]
    assert busy.state == "busy"
    assert busy.task == _name(block_forever)
    assert busy.tasks_done == 0
    assert busy.rss is not None and busy.rss > 1024 * 1024
    assert busy.cpu_seconds is not None and busy.cpu_seconds >= 0
    assert len(stats.workers) == 2
    for other in stats.workers:
        if other.pid != pid:
            assert other.state in ("starting", "idle")
            assert other.task is None
    assert (stats.submitted, stats.queued, stats.running) == (1, 0, 1)
    assert pool.cancel(future)
    after = pool.stats()
    # Killed: on its way out, or already gone and replaced.
    assert [(w.state, w.task) for w in after.workers if w.pid == pid] in ([], [("stopping", None)])
    assert (after.running, after.cancelled) == (0, 1)


def test_a_worker_in_its_initializer_is_starting(handshake: Handshake) -> None:
    p = Pool(1, initializer=block_forever, initargs=(handshake.path,))
    try:
        future = p.submit(square, 2)
        pid = handshake.wait_pid()
        stats = p.stats()
        (worker,) = stats.workers
        assert isinstance(worker, WorkerStats)
        assert (worker.pid, worker.state, worker.task, worker.tasks_done) == (pid, "starting", None, 0)
        assert (stats.queued, stats.running) == (1, 0)
        assert p.pending() == [future]
    finally:
        close(p)
    assert future.cancelled()


def test_pending_and_clear_leave_the_running_task(handshake: Handshake) -> None:
    p = Pool(1)
    try:
        blocker = p.submit(block_forever, handshake.path)
        handshake.wait()
        queued = [p.submit(square, i) for i in range(5)]
        assert p.pending() == queued
        assert blocker not in p.pending()
        stats = p.stats()
        assert (stats.submitted, stats.queued, stats.running) == (6, 5, 1)

        # Cancelled by its caller: gone from pending() and counted at once,
        # though the supervisor has not looked at the queue since.
        assert queued[1].cancel()
        assert p.pending() == [queued[0], *queued[2:]]
        stats = p.stats()
        assert (stats.queued, stats.cancelled) == (4, 1)

        # Waiters hear of clear() at once: nothing else can end these tasks.
        finished: list[set[concurrent.futures.Future[int]]] = []
        waiter = threading.Thread(
            target=lambda: finished.append(concurrent.futures.wait(queued, timeout=60)[0])
        )
        waiter.start()
        assert p.clear() == 4
        waiter.join(60)
        assert finished == [set(queued)]
        assert all(f.cancelled() for f in queued)
        assert blocker.running()
        assert p.pending() == []
        assert p.clear() == 0
        stats = p.stats()
        assert (stats.queued, stats.running, stats.cancelled) == (0, 1, 5)
        assert [w.state for w in stats.workers] == ["busy"]
        assert _balanced(stats)

        assert p.cancel(blocker)
        assert p.submit(square, 3).result(timeout=60) == 9
        stats = p.stats()
        assert (stats.submitted, stats.done, stats.cancelled) == (7, 1, 6)
        assert _balanced(stats)
    finally:
        close(p)


def test_restarts_counted_after_a_worker_is_killed(pool: Pool, handshake: Handshake) -> None:
    assert pool.stats().restarts == 0
    future = pool.submit(block_forever, handshake.path)
    pid = handshake.wait_pid()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLost):
        future.result(timeout=60)
    stats = pool.stats()  # answered after the death was handled, replacement and all
    assert stats.restarts == 1
    assert stats.failed == {"WorkerLost": 1}
    assert stats.retried == 0
    assert pid not in [w.pid for w in stats.workers]
    assert len(stats.workers) == 2
    assert sorted(w.pid for w in stats.workers) == sorted(worker_pids(pool))


def test_stats_after_shutdown_keep_the_counts() -> None:
    p = Pool(2)
    futures = [p.submit(square, i) for i in range(6)]
    failing = p.submit(raise_value_error, "no")
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(6)]
    with pytest.raises(ValueError):
        failing.result(timeout=60)
    assert len(p.stats().workers) == 2
    p.shutdown()
    stats = p.stats()
    assert stats == PoolStats(
        submitted=7,
        queued=0,
        running=0,
        done=6,
        failed={"ValueError": 1},
        cancelled=0,
        retried=0,
        restarts=0,
        workers=(),
    )
    assert p.pending() == []
    assert p.clear() == 0


def test_shutdown_cancelling_futures_counts_them(handshake: Handshake) -> None:
    p = Pool(1)
    try:
        blocker = p.submit(block_forever, handshake.path)
        handshake.wait()
        queued = [p.submit(square, i) for i in range(3)]
        p.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        stats = p.stats()  # still served by the supervisor: the blocker runs
        assert (stats.queued, stats.running, stats.cancelled) == (0, 1, 3)
        assert p.cancel(blocker)
        p.shutdown()
        stats = p.stats()
        assert (stats.submitted, stats.cancelled, stats.workers) == (4, 4, ())
    finally:
        close(p)


def test_a_pool_never_started_has_empty_stats() -> None:
    before = psutil.Process().children(recursive=True)
    p = Pool(3)
    try:
        stats = p.stats()
        assert stats == PoolStats(0, 0, 0, 0, {}, 0, 0, 0, ())
        assert p.pending() == []
        assert p.clear() == 0
        assert psutil.Process().children(recursive=True) == before  # nothing started
    finally:
        p.shutdown()
    assert p.stats() == stats


def test_stats_are_consistent_while_work_runs(pool: Pool) -> None:
    """Taken by the supervisor between two events: no task is ever missing or counted twice."""
    done = threading.Event()
    seen: list[PoolStats] = []

    def watch() -> None:
        while not done.is_set():
            seen.append(pool.stats())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        futures = [pool.submit(square, i) for i in range(300)]
        assert sum(pool.map(square, range(300), chunksize=3)) == sum(i * i for i in range(300))
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(300)]
    finally:
        done.set()
        watcher.join(60)
    seen.append(pool.stats())
    assert len(seen) > 1
    for stats in seen:
        assert _balanced(stats), stats
        assert not stats.failed and not stats.cancelled
    for earlier, later in itertools.pairwise(seen):
        assert earlier.submitted <= later.submitted and earlier.done <= later.done
    assert (seen[-1].submitted, seen[-1].done) == (400, 400)
    assert sum(w.tasks_done for w in seen[-1].workers) == 400


def test_asked_from_a_done_callback(pool: Pool, handshake: Handshake) -> None:
    """Callbacks run in the supervisor thread: asking it must not wait for itself."""
    other = Handshake(Path(handshake.path).parent)
    blocker = pool.submit(block_forever, other.path)
    other.wait()
    answered = threading.Event()
    seen: list[tuple[str, PoolStats, bool]] = []

    def callback(f: concurrent.futures.Future[str]) -> None:
        seen.append((threading.current_thread().name, pool.stats(), pool.cancel(blocker)))
        answered.set()

    future = pool.submit(announce_then, handshake.path, 0, "ran")
    future.add_done_callback(callback)  # not done: it waits for the handshake
    handshake.wait()
    assert answered.wait(60)
    ((thread, stats, cancelled),) = seen
    assert thread == "pool-supervisor"
    assert stats.done == 1  # its own task, counted before its callbacks ran
    assert stats.running == 1  # the blocker, not yet stopped
    assert cancelled and blocker.cancelled()
    assert pool.stats().cancelled == 1


def test_stats_are_frozen_values(pool: Pool) -> None:
    stats = pool.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.done = 5  # type: ignore[misc]
    assert hash(stats) == hash(pool.stats())
    assert isinstance(stats.workers, tuple)
