"""Dispatch: prefetching to busy workers without deadlock, and honest attempt counts."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from _support import Handshake
from _tasks import announce_then_read, exit_once, identity, make_bytes, sleep_then, square

from pool import Future, Pool, WorkerLost
from pool._supervisor import Supervisor
from pool._workers import PIPE_BUDGET, PREFETCH_BELOW, Batch, Paces, Task, WorkerHandle


def _warm(p: Pool) -> None:
    """Make the workers' measured task time short, so they are sent work ahead."""
    assert [f.result(timeout=60) for f in [p.submit(square, i) for i in range(50)]] == [
        i * i for i in range(50)
    ]


def test_big_arguments_and_big_results_together_do_not_deadlock() -> None:
    """A busy worker writing a big result is never sent more than its pipe holds."""
    size = 1 << 20
    payload = b"a" * size
    with Pool(2) as p:
        _warm(p)
        expected: list[object] = []
        futures = []
        for _ in range(60):
            futures.append(p.submit(make_bytes, size))  # small task, big result
            futures.append(p.submit(identity, payload))  # big task, big result
            futures.append(p.submit(square, 3))
            expected += [b"r" * size, payload, 9]
        assert [future.result(timeout=120) for future in futures] == expected
    assert size > PIPE_BUDGET


def test_a_task_is_queued_only_behind_a_short_one_that_has_not_run_long() -> None:
    conn = _BrokenConn()
    try:
        worker = WorkerHandle(_FakeProcess(), conn)  # type: ignore[arg-type]
        worker.ready = True
        worker.speed = 0.001  # its recent tasks took a millisecond
        running = Task(0, Future(), "running", 0, None, b"", b"", None, 0, attempts=1)
        running.started = 100.0
        worker.outstanding.append(running)
        queued = Task(1, Future(), "queued", 0, None, b"", b"", None, 0)
        young, old = 100.0 + PREFETCH_BELOW / 2, 100.0 + 2 * PREFETCH_BELOW
        paces = Paces()
        assert not worker.accepts(queued, Batch(worker), young, paces)  # "running" never measured
        paces.note("running", 10 * PREFETCH_BELOW)
        assert not worker.accepts(queued, Batch(worker), young, paces)  # measured long
        paces = Paces()
        paces.note("running", 0.001)
        assert worker.accepts(queued, Batch(worker), young, paces)
        assert not worker.accepts(queued, Batch(worker), old, paces)  # long this time
        worker.sock.close()
    finally:
        conn.close()


def test_short_tasks_go_to_the_free_worker_not_behind_a_long_one(tmp_path: Path) -> None:
    """Queued behind a long (here: stuck) task, they would wait as long as it does, another worker free."""
    handshake = Handshake(tmp_path)
    release = str(tmp_path / "release")
    os.mkfifo(release)
    with Pool(2) as p:
        workers = p._supervisor._workers
        while len(workers) < 2 or not all(w.speed is not None and w.speed < PREFETCH_BELOW for w in workers):
            _warm(p)  # until both workers' tasks are measured short: they are sent work ahead
        # The clock stands still: however long the stuck task runs, only its
        # function's pace, never measured, keeps the others from queueing behind it.
        now = time.monotonic()
        p._supervisor._clock = lambda: now
        stuck = p.submit(announce_then_read, handshake.path, release)
        try:
            # Many at once: spread over the workers by their load, were both free to take them.
            squares = list(p.map(square, range(200), chunksize=1, timeout=60))
            still_running = not stuck.done()
        finally:
            handshake.wait()  # the task announces itself, then reads `release`
            with open(release, "w") as out:
                out.write("go\n")
        assert squares == [i * i for i in range(200)]
        assert still_running
        assert stuck.result(timeout=60) == "go"


def test_tasks_queued_behind_a_crash_keep_their_retries(tmp_path: Path) -> None:
    with Pool(1) as p:
        _warm(p)
        slow = p.submit(sleep_then, 0.05, "slow")
        crasher = p.submit(exit_once, str(tmp_path / "crasher"))
        retried = p.options(retries=1).submit(exit_once, str(tmp_path / "retried"))
        assert slow.result(timeout=60) == "slow"
        try:
            crasher.result(timeout=60)
        except WorkerLost:
            pass
        # It crashed its worker once when it really ran: one retry is enough.
        assert retried.result(timeout=60) == "ok"


def test_cancel_futures_keeps_tasks_that_are_already_running_for_their_caller() -> None:
    supervisor = Supervisor(
        max_workers=1,
        context=multiprocessing.get_context("spawn"),
        init=None,
        max_tasks_per_child=None,
    )
    running: Future[object] = Future()
    running.set_running_or_notify_cancel()  # put back after its worker died
    queued: Future[object] = Future()
    for task_id, future in enumerate([running, queued]):
        supervisor._pending.append(Task(task_id, future, "f", 0, None, b"", b"", None, 1))  # type: ignore[arg-type]
    supervisor.shutdown(cancel_futures=True)
    assert queued.cancelled()
    assert not running.done()
    assert [t.future for t in supervisor._pending] == [running]


# --- direct dispatch (see pool._direct) -------------------------------------------


class _BrokenConn:
    """A lent worker's pipe whose other end is gone."""

    def __init__(self) -> None:
        self._ends = socket.socketpair()

    def fileno(self) -> int:
        return self._ends[0].fileno()

    def send_bytes(self, data: bytes) -> None:
        raise BrokenPipeError("the worker is gone")

    def close(self) -> None:
        for end in self._ends:
            end.close()


class _FakeProcess:
    pid = 4242
    exitcode = None
    sentinel = -1


def test_a_failed_direct_send_leaves_the_task_waiting_and_the_worker_ended() -> None:
    supervisor = Supervisor(
        max_workers=1, context=multiprocessing.get_context("spawn"), init=None, max_tasks_per_child=None
    )
    worker = WorkerHandle(_FakeProcess(), _BrokenConn())  # type: ignore[arg-type]
    worker.ready = True
    try:
        future: Future[int] = Future()
        task = Task(1, future, "square", 0, None, b"fn", b"args", None, 0)
        with supervisor._lock:
            supervisor._lent.append(worker)
            assert not supervisor._send_direct(task)
        assert not future.running() and not future.done()  # still waiting: it can be cancelled
        assert future.cancel()
        assert not worker.outstanding and task.attempts == 0
        assert worker.doomed and not worker.usable()
        assert len(supervisor._requests) == 1  # this worker's end, for the supervisor to carry out
    finally:
        supervisor.shutdown(cancel_futures=True)
        worker.sock.close()
        worker.conn.close()


def test_ctrl_c_during_a_direct_send_ends_the_worker_and_loses_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C lands in the caller's thread, which now sends tasks itself: the worker
    it may have left with half a message is replaced, and the pool carries on."""
    import pool._direct as direct

    real = direct._record_sent
    raised: list[bool] = []

    def interrupted(*args: object) -> None:
        if threading.current_thread() is threading.main_thread() and not raised:
            raised.append(True)
            raise KeyboardInterrupt  # as a signal handler would, right after the send
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(direct, "_record_sent", interrupted)
    with Pool(1) as p:
        for _ in range(1000):  # until a submit finds the worker idle and sends directly
            try:
                assert p.submit(square, 3).result(timeout=60) == 9
            except KeyboardInterrupt:
                break
        assert raised
        assert [p.submit(square, i).result(timeout=60) for i in range(20)] == [i * i for i in range(20)]
        stats = p.stats()
        ended = stats.done + sum(stats.failed.values()) + stats.cancelled
        assert stats.submitted == stats.queued + stats.running + ended  # the interrupted one: cancelled
        assert stats.restarts == 1
        # The replacement serves; the ended worker may still be on its way out.
        assert sorted(w.state for w in stats.workers) in (["idle"], ["idle", "stopping"])
