"""The crash table: where a task crashes x how -> what the caller sees.

After every crash the pool must still serve new tasks, the dead worker must
be gone and a replacement must have taken its place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

import psutil
import pytest
from _support import Handshake, worker_pids
from _tasks import (
    CrashAtPickle,
    CrashAtUnpickle,
    block_forever,
    crash,
    return_crash_at_pickle,
    return_crash_at_unpickle,
    square,
)
from conftest import wait_gone

from pool import Pool, SerializationError, WorkerLost

# where the crash happens -> how to submit a task that crashes there
WHERE = {
    "function": lambda p, how: p.submit(crash, how),
    "unpickling arguments": lambda p, how: p.submit(square, CrashAtUnpickle(how)),
    "pickling the result": lambda p, how: p.submit(return_crash_at_pickle, how),
}

# how it crashes -> (exception the caller sees, text its message must hold)
HOW: dict[str, tuple[type[BaseException], str]] = {
    "raise": (ValueError, "crash requested"),
    "sys.exit": (SystemExit, "3"),
    "os._exit": (WorkerLost, "exit code 3"),
    "segfault": (WorkerLost, "SIGSEGV"),
    "sigkill": (WorkerLost, "SIGKILL"),
}


def _assert_recovered(p: Pool, dead_pid: int | None) -> None:
    """The pool serves new work with a full set of workers, the dead one gone."""
    assert [f.result(timeout=60) for f in [p.submit(square, i) for i in range(8)]] == [
        i * i for i in range(8)
    ]
    pids = worker_pids(p)
    assert len(pids) == 2
    if dead_pid is not None:
        assert dead_pid not in pids
        try:
            assert psutil.Process(dead_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass  # gone, as it should be


@pytest.mark.parametrize("how", list(HOW))
@pytest.mark.parametrize("where", list(WHERE))
def test_crash_table(any_pool: Pool, where: str, how: str) -> None:
    expected, text = HOW[how]
    if where == "pickling the result" and expected is ValueError:
        expected = SerializationError  # the task's result, not the task, failed
    if where == "pickling the result" and how == "sys.exit":
        expected, text = SerializationError, "SystemExit: 3"
    neighbours = [any_pool.submit(square, i) for i in range(4)]
    future = WHERE[where](any_pool, how)
    with pytest.raises(expected) as info:
        future.result(timeout=60)
    assert text in str(info.value)
    # The other tasks were not touched by the crash.
    assert [f.result(timeout=60) for f in neighbours] == [0, 1, 4, 9]
    dead = info.value.pid if isinstance(info.value, WorkerLost) else None
    if dead is not None:
        assert isinstance(info.value, WorkerLost)
        assert str(dead) in str(info.value)
        assert "crash" in str(info.value) or "square" in str(info.value)
    _assert_recovered(any_pool, dead)


@pytest.mark.parametrize("how", ["raise", "sys.exit"])
def test_result_that_fails_to_unpickle_in_the_caller(pool: Pool, how: str) -> None:
    future = pool.submit(return_crash_at_unpickle, how)
    with pytest.raises(SerializationError, match="cannot unpickle the result"):
        future.result(timeout=60)
    _assert_recovered(pool, None)


def test_argument_that_fails_to_pickle_fails_at_submit(pool: Pool) -> None:
    with pytest.raises(SerializationError, match="argument 1") as info:
        pool.submit(square, 1, CrashAtPickle("raise"))
    assert isinstance(info.value.__cause__, ValueError)
    _assert_recovered(pool, None)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_worker_killed_from_outside_mid_task(any_pool: Pool, handshake: Handshake, sig: int) -> None:
    future = any_pool.submit(block_forever, handshake.path)
    pid = handshake.wait_pid()
    queued = [any_pool.submit(square, i) for i in range(6)]
    os.kill(pid, sig)
    with pytest.raises(WorkerLost) as info:
        future.result(timeout=60)
    error = info.value
    assert error.pid == pid
    assert error.exitcode == -sig
    assert error.signal == sig
    assert signal.Signals(sig).name in str(error)
    assert "block_forever" in str(error)
    assert [f.result(timeout=60) for f in queued] == [i * i for i in range(6)]
    _assert_recovered(any_pool, pid)


def test_idle_worker_killed_is_replaced_without_failing_anything(pool: Pool) -> None:
    assert pool.submit(square, 2).result(timeout=60) == 4
    victim = worker_pids(pool)[0]
    os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        assert not wait_gone([psutil.Process(victim)])
    results = [pool.submit(square, i) for i in range(10)]
    assert [f.result(timeout=60) for f in results] == [i * i for i in range(10)]
    _assert_recovered(pool, victim)


def test_every_worker_dies_at_once(pool: Pool, handshake: Handshake) -> None:
    """All workers lost together: each running task fails, the pool refills."""
    futures: list[Any] = []
    pids = []
    for _ in range(2):
        futures.append(pool.submit(block_forever, handshake.path))
        pids.append(handshake.wait_pid())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for future in futures:
        with pytest.raises(WorkerLost):
            future.result(timeout=60)
    _assert_recovered(pool, None)


def test_worker_lost_is_a_broken_process_pool(pool: Pool) -> None:
    """Code written for ProcessPoolExecutor still catches it."""
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        pool.submit(crash, "os._exit").result(timeout=60)


@pytest.mark.skipif(sys.platform != "linux", reason="exit codes by signal are POSIX")
def test_exit_code_in_message(pool: Pool) -> None:
    with pytest.raises(WorkerLost, match=r"exit code 3 while running .*crash"):
        pool.submit(crash, "os._exit").result(timeout=60)
