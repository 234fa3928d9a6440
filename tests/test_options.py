"""Per-task options: timeouts that kill, retries of tasks whose worker died."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from _support import Handshake, worker_pids
from _tasks import always_die, block_forever, die_once, square, start_child_and_block
from conftest import wait_gone

from pool import Pool, TaskTimeout, WorkerLost


def test_timeout_kills_the_task_and_its_children(pool: Pool, handshake: Handshake) -> None:
    future = pool.options(timeout=0.5).submit(start_child_and_block, handshake.path)
    worker_pid, child_pid = (int(x) for x in handshake.wait().split())
    family = [psutil.Process(worker_pid), psutil.Process(child_pid)]
    with pytest.raises(TaskTimeout) as info:
        future.result(timeout=60)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.5
    assert "start_child_and_block" in str(info.value)
    assert not wait_gone(family, timeout=10)
    assert pool.submit(square, 4).result(timeout=60) == 16
    assert worker_pid not in worker_pids(pool)


def test_timeout_counts_from_start_not_from_submit() -> None:
    with Pool(1) as p:
        first = p.options(timeout=1.0).submit(block_forever)
        # Queued behind `first` for a second, longer than its own timeout.
        second = p.options(timeout=0.5).submit(square, 3)
        with pytest.raises(TaskTimeout):
            first.result(timeout=60)
        assert second.result(timeout=60) == 9


def test_pool_wide_default_timeout_and_override() -> None:
    with Pool(1, task_timeout=0.3) as p:
        with pytest.raises(TaskTimeout):
            p.submit(block_forever).result(timeout=60)
        assert p.options(timeout=None).submit(square, 2).result(timeout=60) == 4
        assert p.options(retries=1).submit(square, 3).result(timeout=60) == 9


def test_timeout_applies_to_map_chunks(pool: Pool) -> None:
    with pytest.raises(TaskTimeout):
        list(pool.options(timeout=0.3).map(block_forever, [None]))
    assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_retry_redelivers_a_task_whose_worker_died(pool: Pool, tmp_path: Path) -> None:
    assert pool.options(retries=1).submit(die_once, str(tmp_path / "m1")).result(timeout=60) == "survived"
    with pytest.raises(WorkerLost):
        pool.submit(die_once, str(tmp_path / "m2")).result(timeout=60)


def test_poison_task_ends_after_its_retries(pool: Pool) -> None:
    with pytest.raises(WorkerLost, match="after 3 attempts") as info:
        pool.options(retries=2).submit(always_die).result(timeout=60)
    assert info.value.attempts == 3
    assert info.value.exitcode == -9
    assert pool.submit(square, 5).result(timeout=60) == 25


def test_a_task_that_raised_is_not_retried(pool: Pool, tmp_path: Path) -> None:
    log = tmp_path / "calls"

    def fail_and_log() -> None:
        with open(log, "a") as f:
            f.write("call\n")
        raise ValueError("no retry for me")

    with pytest.raises(ValueError):
        pool.options(retries=3).submit(fail_and_log).result(timeout=60)
    assert log.read_text().count("call") == 1


def test_options_views_chain_and_validate(pool: Pool) -> None:
    view = pool.options(timeout=5).options(retries=2)
    assert (view._timeout, view._retries) == (5.0, 2)
    assert view.submit(square, 6).result(timeout=60) == 36
    assert list(view.starmap(pow, [(2, 3)])) == [8]
    for bad, error in [
        ({"timeout": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"retries": -1}, ValueError),
        ({"retries": 1.5}, TypeError),
        ({"retries": True}, TypeError),
        ({"tiemout": 1}, TypeError),
    ]:
        with pytest.raises(error):
            pool.options(**bad)  # type: ignore[arg-type]


def test_user_keyword_arguments_named_like_options_are_passed_through(pool: Pool) -> None:
    def takes(timeout: int, retries: int) -> int:
        return timeout + retries

    assert pool.submit(takes, timeout=1, retries=2).result(timeout=60) == 3
