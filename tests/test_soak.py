"""Soak: minutes of mixed work under random kills, timeouts, recycling and cancels.

Outside the default suite. Run it (ten minutes by default) with:

    .venv/bin/python -m pytest -m slow tests/test_soak.py -s -o faulthandler_timeout=0

``POOL_SOAK_SECONDS`` sets the duration. It ends with the counts of tasks
submitted, completed and failed by cause, and asserts that no process, file
descriptor or shared-memory segment is left over (the pool's own segments
for big buffers have no name: they are descriptors, counted as such).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from _tasks import (
    always_die,
    big_bytes,
    block_forever,
    die_once,
    hold_memory,
    identity,
    raise_value_error,
    sleep_then,
    square,
)
from conftest import stray_processes

from pool import Pool, TaskTimeout, WorkerLost

SECONDS = float(os.environ.get("POOL_SOAK_SECONDS", "600"))
IN_FLIGHT = 64

# kind -> what its future may end in, besides being stopped by a kill or a cancel
EXPECTED: dict[str, set[str]] = {
    "ok": {"result"},
    "slow": {"result"},
    "raises": {"ValueError"},
    "timeout": {"TaskTimeout"},
    "memory": {"result"},
    "poison": {"WorkerLost"},
    "flaky-retried": {"result"},
    "map": {"result"},
    "big": {"result"},
    "big-made": {"result"},
}
INTERRUPTIONS = {"WorkerLost", "CancelledError"}


# /dev/shm is shared by the whole machine: count only the names the pool and
# the multiprocessing machinery under it create (SharedMemory's "psm_",
# semaphores' "sem.mp-", and the pool's own "pool-"), not other programs'.
_OURS = ("psm_", "sem.mp-", "pool-", "sem.pool-")


def _shm_segments() -> set[str]:
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith(_OURS)}
    except OSError:
        return set()


def _outcome(future: concurrent.futures.Future[Any]) -> str:
    if future.cancelled():
        return "CancelledError"
    error = future.exception(timeout=0)
    return "result" if error is None else type(error).__name__


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 300)
def test_soak(tmp_path: Path) -> None:  # noqa: PLR0915  # one scenario, read top to bottom
    rng = random.Random(20261125)
    with Pool(2) as warm:  # start multiprocessing's helpers (forkserver) first: they stay
        warm.submit(square, 1).result(timeout=60)
    fds_before = psutil.Process().num_fds()
    shm_before = _shm_segments()
    submitted: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    wrong: list[tuple[str, str]] = []
    kills = 0
    cancels = 0
    stop = threading.Event()
    p = Pool(2, max_memory_per_child="120MB", max_tasks_per_child=500, task_timeout=30)

    def killer() -> None:
        nonlocal kills
        while not stop.wait(rng.uniform(0.2, 1.0)):  # pacing of the chaos, not synchronization
            pids = p._supervisor.worker_pids()
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    in_flight: dict[concurrent.futures.Future[Any], tuple[str, Any]] = {}
    deadline = time.monotonic() + SECONDS
    n = 0
    try:
        while time.monotonic() < deadline:
            while len(in_flight) < IN_FLIGHT:
                n += 1
                kind = rng.choice(list(EXPECTED))
                submitted[kind] += 1
                if kind == "ok":
                    future, expect = p.submit(square, n), n * n
                elif kind == "slow":
                    future, expect = p.submit(sleep_then, rng.uniform(0, 0.05), n), n
                elif kind == "raises":
                    future, expect = p.submit(raise_value_error, "soak"), None
                elif kind == "timeout":
                    future, expect = p.options(timeout=0.2).submit(block_forever), None
                elif kind == "memory":
                    future, expect = p.submit(hold_memory, 40), None
                elif kind == "poison":
                    future, expect = p.options(retries=1).submit(always_die), None
                elif kind == "flaky-retried":
                    marker = str(tmp_path / f"flaky-{n}")
                    future, expect = p.options(retries=20).submit(die_once, marker), "survived"
                elif kind == "big":  # through shared memory both ways (pool._segments)
                    blob = big_bytes(300_000, n % 50)
                    future, expect = p.options(retries=3).submit(identity, blob), blob
                elif kind == "big-made":
                    future, expect = p.submit(big_bytes, 400_000, n % 50), big_bytes(400_000, n % 50)
                else:
                    future = p.submit(lambda items: list(p_map_squares(items)), list(range(20)))
                    expect = [i * i for i in range(20)]
                in_flight[future] = (kind, expect)
                if rng.random() < 0.03:
                    cancels += 1
                    p.cancel(future)
            done, _ = concurrent.futures.wait(in_flight, timeout=120, return_when="FIRST_COMPLETED")
            assert done, "nothing completed in 120 s: a hang"
            for future in done:
                kind, expect = in_flight.pop(future)
                outcome = _outcome(future)
                outcomes[(kind, outcome)] += 1
                if outcome not in EXPECTED[kind] | INTERRUPTIONS:
                    wrong.append((kind, outcome))
                elif outcome == "result" and expect is not None and future.result() != expect:
                    wrong.append((kind, f"wrong result {future.result()!r}"))
        stop.set()
        for future in concurrent.futures.as_completed(in_flight, timeout=120):
            kind, _ = in_flight[future]
            outcome = _outcome(future)
            outcomes[(kind, outcome)] += 1
            if outcome not in EXPECTED[kind] | INTERRUPTIONS:
                wrong.append((kind, outcome))
    finally:
        stop.set()
        thread.join(10)
        p.shutdown(wait=True, cancel_futures=True)

    left = [proc for proc in stray_processes() if proc.status() != psutil.STATUS_ZOMBIE]
    summary = {
        "seconds": SECONDS,
        "submitted": sum(submitted.values()),
        "completed": sum(c for (_, o), c in outcomes.items() if o == "result"),
        "failed by cause": _by_cause(outcomes),
        "by kind": {f"{k}/{o}": c for (k, o), c in sorted(outcomes.items())},
        "worker kills": kills,
        "cancel calls": cancels,
        "processes left": len(left),
        "file descriptors left": psutil.Process().num_fds() - fds_before,
        "shared-memory segments left": len(_shm_segments() - shm_before),
    }
    print("\nsoak summary:", json.dumps(summary, indent=2))
    assert not wrong, wrong[:20]
    assert sum(outcomes.values()) == sum(submitted.values())
    assert summary["processes left"] == 0
    assert summary["file descriptors left"] <= 0
    assert summary["shared-memory segments left"] == 0


def _by_cause(outcomes: collections.Counter[tuple[str, str]]) -> dict[str, int]:
    causes: collections.Counter[str] = collections.Counter()
    for (_, outcome), count in outcomes.items():
        if outcome != "result":
            causes[outcome] += count
    return dict(causes)


def p_map_squares(items: list[int]) -> list[int]:
    return [i * i for i in items]


_ = (TaskTimeout, WorkerLost)  # the causes the summary counts by name
