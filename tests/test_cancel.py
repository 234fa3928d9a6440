"""Pool.cancel: queued tasks are cancelled, running ones are stopped for real."""

from __future__ import annotations

import concurrent.futures
import threading

import psutil
import pytest
from _support import Handshake, worker_pids
from _tasks import block_forever, square, start_child_and_block
from conftest import wait_gone

from pool import Pool


def test_cancel_a_running_task_kills_its_worker_and_children(pool: Pool, handshake: Handshake) -> None:
    future = pool.submit(start_child_and_block, handshake.path)
    worker_pid, child_pid = (int(x) for x in handshake.wait().split())
    family = [psutil.Process(worker_pid), psutil.Process(child_pid)]
    assert future.running()
    assert pool.cancel(future) is True
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=0)
    assert not wait_gone(family, timeout=10)
    assert pool.submit(square, 3).result(timeout=60) == 9
    assert worker_pid not in worker_pids(pool)
    assert len(worker_pids(pool)) == 2


def test_waiters_learn_of_a_stopped_task(pool: Pool, handshake: Handshake) -> None:
    future = pool.submit(block_forever, handshake.path)
    handshake.wait()
    seen: list[set[concurrent.futures.Future[object]]] = []
    waiter = threading.Thread(target=lambda: seen.append(concurrent.futures.wait([future], timeout=60)[0]))
    waiter.start()
    callbacks: list[bool] = []
    future.add_done_callback(lambda f: callbacks.append(f.cancelled()))
    pool.cancel(future)
    waiter.join(60)
    assert seen == [{future}]
    assert callbacks == [True]
    assert list(concurrent.futures.as_completed([future], timeout=60)) == [future]


def test_cancel_queued_and_finished_tasks(handshake: Handshake) -> None:
    with Pool(1) as p:
        blocker = p.submit(block_forever, handshake.path)
        handshake.wait()
        queued = p.submit(square, 2)
        assert p.cancel(queued) is True
        assert queued.cancelled()
        assert p.cancel(blocker) is True
        finished = p.submit(square, 4)
        assert finished.result(timeout=60) == 16
        assert p.cancel(finished) is False
        assert finished.result() == 16


def test_cancel_rejects_foreign_futures(pool: Pool) -> None:
    with pytest.raises(TypeError, match="future this pool returned"):
        pool.cancel(concurrent.futures.Future())
    with pytest.raises(TypeError):
        pool.cancel("not a future")  # type: ignore[arg-type]


def test_cancel_after_shutdown_is_harmless() -> None:
    p = Pool(1)
    future = p.submit(square, 5)
    assert future.result(timeout=60) == 25
    p.shutdown()
    assert p.cancel(future) is False


def test_waiters_hear_of_a_queued_cancel_at_once(handshake: Handshake) -> None:
    """The worker stays busy: no dispatch will look at the queued task for a long time."""
    with Pool(1) as p:
        blocker = p.submit(block_forever, handshake.path)
        handshake.wait()
        queued = p.submit(square, 2)
        waiter = threading.Thread(target=lambda: concurrent.futures.wait([queued], timeout=60))
        waiter.start()
        assert queued.cancel()
        done, _ = concurrent.futures.wait([queued], timeout=60)
        assert done == {queued}
        assert list(concurrent.futures.as_completed([queued], timeout=60)) == [queued]
        waiter.join(60)
        assert not waiter.is_alive()
        p.cancel(blocker)
