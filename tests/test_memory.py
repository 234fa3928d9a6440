"""Memory: recycling by RSS, sizes users write, out-of-memory hints, exhausted memory."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _tasks import exhaust_memory, getpid, hold_memory, square

from pool import Pool
from pool._memory import OomWatch, parse_size, tree_rss
from pool._supervisor import Supervisor


def test_worker_over_its_memory_limit_is_replaced_between_tasks() -> None:
    with Pool(1, max_memory_per_child="60MB") as p:
        fat = p.submit(hold_memory, 100).result(timeout=60)
        # The next task runs in a fresh worker; nothing is lost on the way.
        results = [p.submit(square, i) for i in range(10)]
        assert [f.result(timeout=60) for f in results] == [i * i for i in range(10)]
        assert p.submit(getpid).result(timeout=60) != fat


def test_worker_under_its_memory_limit_is_kept() -> None:
    with Pool(1, max_memory_per_child="2GB") as p:
        first = p.submit(hold_memory, 10).result(timeout=60)
        assert p.submit(getpid).result(timeout=60) == first


def test_exhausted_memory_fails_the_task_not_the_pool(pool: Pool) -> None:
    with pytest.raises(MemoryError):
        pool.submit(exhaust_memory).result(timeout=120)
    assert pool.submit(square, 6).result(timeout=60) == 36


@pytest.mark.parametrize(
    ("text", "size"),
    [(1024, 1024), ("512MB", 512 * 10**6), ("1.5 GiB", int(1.5 * 2**30)), ("10k", 10_000), ("7", 7)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size("limit", text) == size


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("lots", ValueError),
        ("5 XB", ValueError),
        (0, ValueError),
        (-5, ValueError),
        (True, TypeError),
        (1.5, TypeError),
    ],
)
def test_parse_size_rejects(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="limit"):
        parse_size("limit", value)


def test_bad_memory_limit_at_construction() -> None:
    with pytest.raises(ValueError, match="max_memory_per_child"):
        Pool(1, max_memory_per_child="half")


def test_tree_rss_counts_a_live_process() -> None:
    import os

    rss = tree_rss(os.getpid())
    assert rss is not None and rss > 1_000_000
    assert tree_rss(2**22 + 12345) is None  # no such pid


def test_oom_watch_reads_the_cgroup_counter(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert OomWatch(events).count() == 2
    assert OomWatch(tmp_path / "missing").count() is None


class _FakeWorker:
    def __init__(self, rss: int | None, oom_kills: int | None) -> None:
        self.rss = rss
        self.oom_kills = oom_kills


def test_worker_lost_hints_at_out_of_memory(tmp_path: Path) -> None:
    import multiprocessing

    events = tmp_path / "memory.events"
    events.write_text("oom_kill 5\n")
    supervisor = Supervisor(
        max_workers=1,
        context=multiprocessing.get_context("spawn"),
        init=None,
        max_tasks_per_child=None,
        max_memory_per_child=1000,
    )
    supervisor._oom = OomWatch(events)
    hint = supervisor._oom_hint
    assert hint(_FakeWorker(950, 5), -signal.SIGKILL) is not None  # type: ignore[arg-type]
    assert "near max_memory_per_child" in hint(_FakeWorker(950, 5), -signal.SIGKILL)  # type: ignore[arg-type, operator]
    assert hint(_FakeWorker(100, 5), -signal.SIGKILL) is None  # type: ignore[arg-type]
    assert "OOM killer" in hint(_FakeWorker(100, 4), -signal.SIGKILL)  # type: ignore[arg-type, operator]
    assert hint(_FakeWorker(950, 4), 1) is None  # type: ignore[arg-type]
    supervisor.shutdown(cancel_futures=True)
