"""Dispatch: prefetching to busy workers without deadlock, and honest attempt counts."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from _tasks import exit_once, identity, make_bytes, sleep_then, square

from pool import Future, Pool, WorkerLost
from pool._supervisor import Supervisor
from pool._workers import PIPE_BUDGET, Task


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
