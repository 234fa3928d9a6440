"""Initializers: run in every worker; a failing one fails the work, not in a loop."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from _support import Handshake
from _tasks import (
    block_forever,
    get_initialized,
    init_exit,
    init_fail,
    init_first_only,
    init_store,
    square,
)

import pool._supervisor as supervisor_module
from pool import InitializerFailed, Pool, SerializationError


def test_initializer_runs_in_every_worker(start_method: str) -> None:
    with Pool(2, mp_context=start_method, initializer=init_store, initargs=({"k": 1},)) as p:
        assert list(p.map(get_initialized, range(20), chunksize=1)) == [{"k": 1}] * 20


def _count_starts(path: str) -> None:
    with open(path, "a") as log:
        log.write("start\n")
    init_fail()


@pytest.mark.parametrize("initializer", ["raise", "exit"])
def test_failing_initializer_fails_pending_work_without_a_respawn_storm(
    tmp_path: Path, initializer: str
) -> None:
    log = tmp_path / "starts"
    init, args = (_count_starts, (str(log),)) if initializer == "raise" else (init_exit, ())
    p = Pool(2, initializer=init, initargs=args)
    try:
        futures = [p.submit(square, i) for i in range(5)]
        for future in futures:
            with pytest.raises(InitializerFailed) as info:
                future.result(timeout=60)
        error = info.value
        if initializer == "raise":
            assert "initializer refused" in str(error)
            assert "init_fail" in error.traceback  # the remote traceback
            assert isinstance(error.__cause__, RuntimeError)
            starts = log.read_text().count("start")
            assert starts <= supervisor_module.MAX_START_FAILURES + p.max_workers
        else:
            assert "exit code 9" in str(error)
        with pytest.raises(InitializerFailed):
            p.submit(square, 1)
    finally:
        p.shutdown()


def test_unpicklable_initargs_fail_at_construction() -> None:
    with pytest.raises(SerializationError, match="argument 0"):
        Pool(1, initializer=init_store, initargs=(threading.Lock(),))


def test_bad_initializer_arguments() -> None:
    with pytest.raises(TypeError, match="initializer must be callable"):
        Pool(1, initializer=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        Pool(1, initializer=init_store, initargs=[1])  # type: ignore[arg-type]


def test_shutdown_while_workers_cannot_start_returns() -> None:
    """Pending work and an initializer that always fails: no endless respawning."""
    with Pool(2, initializer=init_fail) as p:
        future = p.submit(square, 1)
    with pytest.raises(InitializerFailed):
        future.result(timeout=0)


def test_broken_pool_fails_work_put_back_by_its_last_worker(tmp_path: Path, handshake: Handshake) -> None:
    """The one healthy worker dies, no other can start: its retried task must end."""
    p = Pool(2, initializer=init_first_only, initargs=(str(tmp_path / "first"),))
    try:
        retried = p.options(retries=1).submit(block_forever, handshake.path)
        pid = handshake.wait_pid()
        queued = p.submit(square, 1)  # waits: the healthy worker is busy
        os.kill(pid, signal.SIGKILL)
        for future in (retried, queued):
            with pytest.raises(InitializerFailed):
                future.result(timeout=60)
    finally:
        p.shutdown()


def test_a_worker_killed_while_starting_does_not_break_a_working_pool(tmp_path: Path) -> None:
    """Starts that fail while another worker runs fine are not a broken initializer."""
    with Pool(2, initializer=init_first_only, initargs=(str(tmp_path / "first"),)) as p:
        # Only the first worker ever starts; every other start fails, forever.
        assert [p.submit(square, i).result(timeout=60) for i in range(20)] == [i * i for i in range(20)]
