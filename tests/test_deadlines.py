"""Deadline logic of the supervisor, driven by a fake clock: no waiting."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import pool._supervisor as supervisor_module
from pool import TaskTimeout
from pool._futures import Future
from pool._supervisor import Supervisor
from pool._workers import Task, WorkerHandle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    pid = 4242
    exitcode = None
    sentinel = -1


class FakeConn:
    """A worker's end of a pipe with nothing in it."""

    def __init__(self) -> None:
        self._ends = socket.socketpair()

    def fileno(self) -> int:
        return self._ends[0].fileno()

    def close(self) -> None:
        for end in self._ends:
            end.close()

    def poll(self, timeout: float = 0.0) -> bool:
        return False


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def supervisor(clock: Clock) -> Iterator[Supervisor]:
    s = Supervisor(
        max_workers=2,
        context=multiprocessing.get_context("spawn"),
        init=None,
        max_tasks_per_child=None,
        clock=clock,
    )
    s.killed = []  # type: ignore[attr-defined]
    s._kill = s.killed.append  # type: ignore[attr-defined, method-assign]
    yield s
    s.shutdown(cancel_futures=True)
    for worker in s._workers:  # the fakes: no supervisor thread forgets them
        worker.sock.close()
        worker.conn.close()


def _running(supervisor: Supervisor, started: float, timeout: float | None, queued: int = 0) -> WorkerHandle:
    worker = WorkerHandle(FakeProcess(), FakeConn())  # type: ignore[arg-type]
    worker.ready = True
    for i in range(1 + queued):
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        task = Task(i, future, f"task{i}", 0, None, b"", b"", timeout, 0, attempts=1)
        task.started = started if i == 0 else None
        worker.outstanding.append(task)
    supervisor._workers.append(worker)
    return worker


def test_no_deadline_without_timeouts(supervisor: Supervisor, clock: Clock) -> None:
    _running(supervisor, clock.now, None)
    assert supervisor._next_deadline(clock.now) is None


def test_the_earliest_running_task_sets_the_deadline(supervisor: Supervisor, clock: Clock) -> None:
    _running(supervisor, clock.now, 10.0)
    _running(supervisor, clock.now - 5, 7.0)  # started earlier, due at now + 2
    assert supervisor._next_deadline(clock.now) == clock.now + 2


def test_a_task_is_timed_out_at_its_deadline_not_before(supervisor: Supervisor, clock: Clock) -> None:
    worker = _running(supervisor, clock.now, 3.0, queued=1)
    task = worker.outstanding[0]
    clock.now += 2.999
    supervisor._enforce_deadlines(clock.now)
    assert not task.future.done()
    assert supervisor.killed == []  # type: ignore[attr-defined]
    clock.now += 0.001
    supervisor._enforce_deadlines(clock.now)
    with pytest.raises(TaskTimeout) as info:
        task.future.result(timeout=0)
    assert info.value.timeout == 3.0 and info.value.pid == 4242
    assert supervisor.killed == [worker]  # type: ignore[attr-defined]
    assert worker.doomed
    # The task queued behind was never started: it is not timed out, and a
    # doomed worker sets no further deadline.
    assert not worker.outstanding[0].future.done()
    assert supervisor._next_deadline(clock.now) is None
    supervisor._enforce_deadlines(clock.now + 100)
    assert supervisor.killed == [worker]  # type: ignore[attr-defined]


def test_a_queued_task_is_timed_from_when_it_starts(supervisor: Supervisor, clock: Clock) -> None:
    worker = _running(supervisor, clock.now, 5.0, queued=1)
    first, second = worker.outstanding
    clock.now += 4
    first.future.set_result(None)
    worker.outstanding.popleft()
    second.started = clock.now  # what _handle does when the first one's result arrives
    assert supervisor._next_deadline(clock.now) == clock.now + 5


def test_respawns_are_rate_limited(
    supervisor: Supervisor, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[float] = []
    monkeypatch.setattr(supervisor, "_spawn", lambda: spawned.append(clock.now) or True)
    limit = supervisor_module.RESPAWNS_PER_SECOND * 2
    supervisor._spawn_missing()  # no worker ever appears: every call wants more
    assert len(spawned) == 1
    assert supervisor._next_deadline(clock.now) == clock.now  # the next one without waiting
    for _ in range(3 * limit):
        supervisor._enforce_deadlines(clock.now)
    assert len(spawned) == limit
    assert supervisor._next_deadline(clock.now) == clock.now + 1.0
    clock.now += 0.5
    supervisor._enforce_deadlines(clock.now)
    assert len(spawned) == limit
    clock.now += 0.5
    for _ in range(3 * limit):
        supervisor._enforce_deadlines(clock.now)
    assert len(spawned) == 2 * limit
