"""A caller that waits for its task reads the worker's reply itself (see pool._direct).

Each test first makes one call go straight to a worker and back (`read_directly`):
from then on the supervisor sleeps with its idle workers lent, so the next
submit goes direct as well, and the test checks what the caller sees when
that reply is read in its own thread: results, callbacks, logs, timeouts,
a supervisor that needs the worker back, a worker dying, Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from _support import Handshake
from _tasks import fork_then_die, log_and_return, read_fifo, square

import pool._direct
from pool import Future, Pool, WorkerLost
from pool._supervisor import Supervisor

TIMEOUT = 60
_poll = select.poll


def read_directly(p: Pool, callback: Callable[[Future[Any]], None] | None = None) -> None:
    """Round trips until one is sent and read back in this thread, ``callback`` on that one."""
    me = threading.current_thread()
    for _ in range(200):
        ran_in: list[threading.Thread] = []
        future = p.submit(square, 7)
        future.add_done_callback(lambda _, ran_in=ran_in: ran_in.append(threading.current_thread()))
        if callback is not None:
            future.add_done_callback(callback)
        direct = future._direct is not None  # still set: not ended before the callbacks were added
        assert future.result(timeout=TIMEOUT) == 49
        if direct and ran_in == [me]:
            return
        assert callback is None, "the callback under test ran on a future the supervisor delivered"
    raise AssertionError("no call went straight to a worker and back")


@pytest.fixture
def one() -> Iterator[Pool]:
    """A 1-worker pool whose next submit goes direct."""
    p = Pool(1)
    try:
        read_directly(p)
        yield p
    finally:
        p._supervisor.abort()
        p.shutdown(wait=True)


class _PollSpy:
    """`select.poll` for pool._direct, telling when a reader starts waiting."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        spy = self

        class Poll:
            def __init__(self) -> None:
                self._real = _poll()

            def register(self, fd: int, mask: int) -> None:
                self._real.register(fd, mask)

            def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
                spy.waiting.set()
                return self._real.poll(timeout)

        self.poll = Poll


@pytest.fixture
def poll_spy(monkeypatch: pytest.MonkeyPatch) -> _PollSpy:
    spy = _PollSpy()
    monkeypatch.setattr(pool._direct.select, "poll", spy.poll)  # the select module: for the test's span
    return spy


def _release(fifo: str, line: str = "go") -> None:
    with open(fifo, "w") as out:  # blocks until the task opens it
        out.write(line + "\n")


def test_a_caller_waiting_on_one_task_at_a_time_never_wakes_the_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wakes: list[None] = []
    real = Supervisor._wait_and_handle

    def counted(self: Supervisor) -> None:
        wakes.append(None)
        real(self)

    monkeypatch.setattr(Supervisor, "_wait_and_handle", counted)
    with Pool(1) as p:
        read_directly(p)
        before = len(wakes)
        assert [p.submit(square, i).result(timeout=TIMEOUT) for i in range(200)] == [
            i * i for i in range(200)
        ]
        assert len(wakes) - before <= 2  # through the supervisor, it would be 200 or more
        assert p.stats().done >= 201


def test_done_callbacks_of_a_reply_read_by_the_caller_may_use_the_pool(one: Pool) -> None:
    seen: list[object] = []

    def callback(future: Future[Any]) -> None:
        # Run in the caller's thread once it holds nothing of the supervisor's:
        # a census and a nested round trip both need it.
        seen.append(one.stats().done)
        seen.append(one.submit(square, 3).result(timeout=TIMEOUT))

    done_before = one.stats().done
    read_directly(one, callback)
    assert seen == [done_before + 1, 9]


def test_log_records_of_a_task_read_directly_reach_the_callers_handlers(
    one: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    read_directly(one)
    with caplog.at_level(logging.WARNING, logger="tests.worker"):
        future = one.submit(log_and_return, "direct")
        assert future._direct is not None
        assert future.result(timeout=TIMEOUT) in [w.pid for w in one.stats().workers]
    assert "from the worker: direct" in caplog.text


def test_a_timeout_while_reading_directly_leaves_the_task_running(one: Pool, handshake: Handshake) -> None:
    future = one.submit(read_fifo, handshake.path)
    assert future._direct is not None
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    assert future.running()
    _release(handshake.path, "late")
    assert future.result(timeout=TIMEOUT) == "late"
    assert one.stats().restarts == 0


def test_the_supervisor_takes_the_worker_back_from_a_reading_caller(
    handshake: Handshake, poll_spy: _PollSpy
) -> None:
    with Pool(2) as p:
        read_directly(p)
        held = p.submit(read_fifo, handshake.path)
        assert held._direct is not None
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(held.result(timeout=TIMEOUT)))
        reader.start()
        try:
            assert poll_spy.waiting.wait(TIMEOUT)  # the reader waits on the worker's pipe
            # Both need the supervisor, which recalls the reader first.
            assert sorted(w.state for w in p.stats().workers) == ["busy", "idle"]
            assert p.submit(square, 5).result(timeout=TIMEOUT) == 25
        finally:
            _release(handshake.path, "held")
            reader.join(TIMEOUT)
        assert got == ["held"]
        assert p.stats().restarts == 0


def test_a_worker_dying_under_a_reading_caller_is_reported(one: Pool, handshake: Handshake) -> None:
    """Its orphaned child holds the pipe open: the reader would never see it close.
    The supervisor sees the death and recalls the reader."""
    future = one.submit(fork_then_die, handshake.path)
    assert future._direct is not None
    try:
        with pytest.raises(WorkerLost):
            future.result(timeout=TIMEOUT)
    finally:
        orphan = psutil.Process(handshake.wait_pid())
        orphan.kill()
        orphan.wait(TIMEOUT)
    assert one.submit(square, 4).result(timeout=TIMEOUT) == 16


def test_ctrl_c_while_a_caller_waits_directly_leaves_its_task_running(
    one: Pool, handshake: Handshake, poll_spy: _PollSpy
) -> None:
    future = one.submit(read_fifo, handshake.path)
    assert future._direct is not None
    main = threading.get_ident()

    def interrupt() -> None:
        if poll_spy.waiting.wait(TIMEOUT):
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        future.result(timeout=TIMEOUT)
    interrupter.join(TIMEOUT)
    assert future.running()
    _release(handshake.path, "after")
    assert future.result(timeout=TIMEOUT) == "after"
    assert one.stats().restarts == 0


def test_ctrl_c_while_a_caller_handles_a_reply_ends_that_task_and_its_worker(
    one: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply may have left the pipe without reaching the future: the task ends
    cancelled, and the worker, which the pool may still count as running it, is replaced."""
    real = Supervisor._handle_frames
    raised: list[bool] = []

    def interrupted(self: Supervisor, *args: Any) -> None:
        if threading.current_thread() is threading.main_thread() and not raised:
            raised.append(True)
            raise KeyboardInterrupt  # as a signal handler would, between the read and the delivery
        real(self, *args)

    monkeypatch.setattr(Supervisor, "_handle_frames", interrupted)
    future = one.submit(square, 6)
    assert future._direct is not None
    with pytest.raises(KeyboardInterrupt):
        future.result(timeout=TIMEOUT)
    assert raised and future.cancelled()
    assert [one.submit(square, i).result(timeout=TIMEOUT) for i in range(20)] == [i * i for i in range(20)]
    stats = one.stats()
    assert stats.restarts == 1
    assert stats.submitted == stats.done + stats.cancelled
    assert stats.cancelled == 1


def test_a_caller_reads_directly_only_in_its_own_process(one: Pool) -> None:
    """A fork of the caller has no supervisor: it must not read the parent's workers' pipes."""
    future = one.submit(square, 8)
    assert future._direct is not None
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover  # the child's code
        try:
            future.result(timeout=0.05)
            outcome = b"read"
        except TimeoutError:
            outcome = b"waited"
        except BaseException:
            outcome = b"error"
        os.write(write, outcome)
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 16) == b"waited"
    finally:
        os.close(read)
        os.waitpid(child, 0)
    assert future.result(timeout=TIMEOUT) == 64
