"""Initializers: run in every worker; a failing one fails the work, not in a loop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from _tasks import get_initialized, init_exit, init_fail, init_store, square

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
