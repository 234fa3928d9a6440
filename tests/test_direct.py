"""A caller that waits for its task reads the worker's reply itself (see pool._direct).

Most tests hold a task in its worker (it reads a FIFO) that went straight to
that worker (`submit_direct`), make sure the waiting thread reads its pipe
itself (`engage`), then release it, and check what the caller sees when the
reply is read in its own thread: results, callbacks, logs, timeouts, a
supervisor that needs the worker back, a worker dying, Ctrl-C.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import select
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from _support import Handshake
from _tasks import (
    die_when_released,
    fork_then_die,
    log_and_return,
    read_fifo,
    read_lines,
    record_spins,
    square,
)

import pool._direct
from pool import Future, Pool, WorkerLost
from pool._direct import Direct
from pool._spin import SPIN
from pool._supervisor import Supervisor
from pool._workers import Paces

TIMEOUT = 60
_poll = select.poll


class _PollSpy:
    """`select.poll` for pool._direct, telling when a reader starts waiting on a pipe.

    Waiting means sleeping in poll: polls that do not sleep (a reader's
    first, spinning ones) do not count.
    """

    def __init__(self) -> None:
        self.waiting = threading.Event()
        spy = self

        class Poll:
            def __init__(self) -> None:
                self._real = _poll()

            def register(self, fd: int, mask: int) -> None:
                self._real.register(fd, mask)

            def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
                if timeout != 0:
                    spy.waiting.set()
                return self._real.poll(timeout)

        self.poll = Poll


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _PollSpy:
    spy = _PollSpy()
    monkeypatch.setattr(pool._direct.select, "poll", spy.poll)  # the select module: for the test's span
    return spy


@pytest.fixture
def fifo() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "release")
        os.mkfifo(path)
        yield path


@pytest.fixture
def one() -> Iterator[Pool]:
    p = Pool(1)
    try:
        assert p.submit(square, 2).result(timeout=TIMEOUT) == 4  # its worker is up
        yield p
    finally:
        p._supervisor.abort()
        p.shutdown(wait=True)


def release(fifo: str, line: str = "go") -> None:
    with open(fifo, "w") as out:  # blocks until the task opens it
        out.write(line + "\n")


def release_when(event: threading.Event, fifo: str, line: str = "go") -> threading.Thread:
    """Release the task from another thread once ``event`` is set."""

    def run() -> None:
        if event.wait(TIMEOUT):
            release(fifo, line)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def submit_direct(p: Pool, fifo: str) -> Future[str]:
    """A task that reads ``fifo``, sent by this thread straight to an idle worker."""
    for _ in range(100):
        future = p.submit(read_fifo, fifo)
        if future._direct is not None:
            return future
        # The supervisor was awake (it had not lent its workers yet): run this one out.
        release(fifo, "again")
        assert future.result(timeout=TIMEOUT) == "again"
    raise AssertionError("no submit went straight to a worker")


def engage(future: Future[Any], spy: _PollSpy) -> None:
    """Wait on ``future`` until this thread has read its worker's pipe itself once.

    Its task must still be held. The supervisor, woken for something else,
    may keep its workers for a moment; once it sleeps again nothing wakes it,
    and the next wait on ``future`` reads directly again.
    """
    spy.waiting.clear()
    while not spy.waiting.is_set():
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.01)
    spy.waiting.clear()


def test_a_caller_waiting_on_one_task_at_a_time_leaves_the_supervisor_asleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wakes: list[None] = []
    real = Supervisor._wait_and_handle

    def counted(self: Supervisor) -> None:
        wakes.append(None)
        real(self)

    monkeypatch.setattr(Supervisor, "_wait_and_handle", counted)
    with Pool(1) as p:
        assert p.submit(square, 2).result(timeout=TIMEOUT) == 4
        before = len(wakes)
        assert [p.submit(square, i).result(timeout=TIMEOUT) for i in range(500)] == [
            i * i for i in range(500)
        ]
        # Through the supervisor it wakes once a task, or more. Here only when a
        # reply beats its caller to the pipe: the worker, woken by the send on
        # the caller's CPU, may run first. A fifth of the tasks on 2 idle cores.
        assert len(wakes) - before < 400
        assert p.stats().done == 501


def test_callbacks_added_while_the_caller_reads_run_in_the_supervisor_in_order(
    one: Pool, fifo: str, spy: _PollSpy
) -> None:
    """Never inside the caller's result(): it may hold a lock a callback takes."""
    future = submit_direct(one, fifo)
    seen: list[object] = []
    ran = threading.Event()

    def first(_: Future[Any]) -> None:
        seen.append(("first", threading.current_thread().name, one.stats().done))

    def second(_: Future[Any]) -> None:
        seen.append(("second", threading.current_thread().name))
        ran.set()

    done = one.stats().done
    engage(future, spy)

    def add_then_release() -> None:
        if spy.waiting.wait(TIMEOUT):  # this thread reads the pipe now
            future.add_done_callback(first)
            future.add_done_callback(second)
            release(fifo, "direct")

    adder = threading.Thread(target=add_then_release)
    adder.start()
    assert future.result(timeout=TIMEOUT) == "direct"
    adder.join(TIMEOUT)
    assert ran.wait(TIMEOUT)
    assert seen == [("first", "pool-supervisor", done + 1), ("second", "pool-supervisor")]


def test_a_future_with_callbacks_is_left_to_the_supervisor(one: Pool) -> None:
    sent_direct = 0
    for _ in range(20):
        ran_in: list[str] = []
        ran = threading.Event()

        def record(_: Future[Any], ran_in: list[str] = ran_in, ran: threading.Event = ran) -> None:
            ran_in.append(threading.current_thread().name)
            ran.set()

        future = one.submit(square, 5)
        future.add_done_callback(record)
        pending = future._direct is not None  # sent straight to the worker, not ended yet
        sent_direct += pending
        assert future.result(timeout=TIMEOUT) == 25
        assert ran.wait(TIMEOUT)
        if pending:
            assert ran_in == ["pool-supervisor"]
    assert sent_direct


def test_log_records_of_a_task_read_directly_reach_the_callers_handlers(
    one: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """Whether the supervisor or the caller reads the reply, the records arrive."""
    with caplog.at_level(logging.WARNING, logger="tests.worker"):
        direct = 0
        for _ in range(100):
            future = one.submit(log_and_return, "direct")
            direct += future._direct is not None
            assert future.result(timeout=TIMEOUT) in [w.pid for w in one.stats().workers]
            if direct:
                break
    assert direct
    assert "from the worker: direct" in caplog.text


def test_a_timeout_while_reading_directly_leaves_the_task_running(
    one: Pool, fifo: str, spy: _PollSpy
) -> None:
    future = submit_direct(one, fifo)
    engage(future, spy)  # a timeout, from the worker's pipe
    assert future.running()
    releaser = release_when(spy.waiting, fifo, "late")
    assert future.result(timeout=TIMEOUT) == "late"
    releaser.join(TIMEOUT)
    assert one.stats().restarts == 0


def test_the_supervisor_takes_the_worker_back_from_a_reading_caller(fifo: str, spy: _PollSpy) -> None:
    with Pool(2) as p:
        assert p.submit(square, 2).result(timeout=TIMEOUT) == 4
        held = submit_direct(p, fifo)
        engaged = threading.Event()
        got: list[object] = []

        def wait_for_it() -> None:
            engage(held, spy)
            engaged.set()
            got.append(held.result(timeout=TIMEOUT))

        reader = threading.Thread(target=wait_for_it)
        reader.start()
        try:
            assert engaged.wait(TIMEOUT)
            assert spy.waiting.wait(TIMEOUT)  # the reader waits on the worker's pipe
            # Both need the supervisor, which recalls the reader first.
            states = sorted(w.state for w in p.stats().workers)
            assert p.submit(square, 5).result(timeout=TIMEOUT) == 25
        finally:
            release(fifo, "held")
            reader.join(TIMEOUT)
        assert states in (["busy"], ["busy", "starting"], ["busy", "idle"])
        assert got == ["held"]
        assert p.stats().restarts == 0


def test_a_worker_dying_under_a_reading_caller_fails_its_task_with_worker_lost(
    one: Pool, fifo: str, spy: _PollSpy
) -> None:
    """The reader sees its pipe end; the death is the supervisor's to settle."""
    future: Future[Any] | None = None
    lost = 1
    for _ in range(100):
        future = one.submit(die_when_released, fifo)
        if future._direct is not None:
            break
        release(fifo)  # not direct: let this one die, and try again
        with pytest.raises(WorkerLost):
            future.result(timeout=TIMEOUT)
        lost += 1
    assert future is not None and future._direct is not None
    engage(future, spy)
    releaser = release_when(spy.waiting, fifo)
    with pytest.raises(WorkerLost):
        future.result(timeout=TIMEOUT)
    releaser.join(TIMEOUT)
    assert one.submit(square, 4).result(timeout=TIMEOUT) == 16
    assert one.stats().failed == {"WorkerLost": lost}


def test_a_worker_dying_under_a_reading_caller_is_reported(
    one: Pool, fifo: str, spy: _PollSpy, handshake: Handshake
) -> None:
    """Its orphaned child holds the pipe open: the reader would never see it close.
    The supervisor sees the death and recalls the reader."""
    future: Future[Any] | None = None
    for _ in range(100):
        future = one.submit(fork_then_die, handshake.path, fifo)
        orphan = psutil.Process(handshake.wait_pid())
        if future._direct is not None:
            break
        release(fifo)  # not direct: let this one die, and try again
        with pytest.raises(WorkerLost):
            future.result(timeout=TIMEOUT)
        orphan.kill()
        orphan.wait(TIMEOUT)
    assert future is not None and future._direct is not None
    try:
        engage(future, spy)
        releaser = release_when(spy.waiting, fifo)
        with pytest.raises(WorkerLost):
            future.result(timeout=TIMEOUT)
        releaser.join(TIMEOUT)
    finally:
        orphan.kill()
        orphan.wait(TIMEOUT)
    assert one.submit(square, 4).result(timeout=TIMEOUT) == 16


def signal_until(spy: _PollSpy, signum: int, handled: threading.Event) -> threading.Thread:
    """Once the main thread waits in its poll, signal it until its handler ran.

    Again and again: a signal that lands just before the poll begins is
    handled only once the poll returns, as in any Python program.
    """
    main = threading.get_ident()

    def run() -> None:
        if spy.waiting.wait(TIMEOUT):
            for _ in range(int(TIMEOUT / 0.01)):
                signal.pthread_kill(main, signum)
                if handled.wait(0.01):
                    return

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_ctrl_c_while_a_caller_waits_directly_leaves_its_task_running(
    one: Pool, fifo: str, spy: _PollSpy
) -> None:
    future = submit_direct(one, fifo)
    engage(future, spy)
    interrupted = threading.Event()

    def ctrl_c(signum: int, frame: object) -> None:
        if not interrupted.is_set():  # the first one only: the others come too late
            interrupted.set()
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        interrupter = signal_until(spy, signal.SIGINT, interrupted)
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=TIMEOUT)
        interrupter.join(TIMEOUT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert future.running()
    release(fifo, "after")
    assert future.result(timeout=TIMEOUT) == "after"
    assert one.stats().restarts == 0


def test_a_signal_handler_may_use_the_pool_while_its_thread_reads_directly(
    one: Pool, fifo: str, spy: _PollSpy
) -> None:
    """The handler runs in the middle of the reader's poll; the census it asks for
    needs the supervisor, which takes the worker back without waiting for it."""
    future = submit_direct(one, fifo)
    engage(future, spy)
    counted: list[int] = []
    handled = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if not handled.is_set():
            counted.append(one.stats().running)
            handled.set()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        kicker = signal_until(spy, signal.SIGUSR1, handled)
        releaser = release_when(handled, fifo, "after the handler")
        assert future.result(timeout=TIMEOUT) == "after the handler"
        kicker.join(TIMEOUT)
        releaser.join(TIMEOUT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert counted == [1]


class _RawPoller:
    """A selector's epoll object, raising once where a signal could (see `once`)."""

    def __init__(self, real: Any, once: Callable[[], None]) -> None:
        self._real = real
        self._once = once

    def unregister(self, fd: int) -> None:
        self._once()  # the selector's map updated, the kernel's set not
        self._real.unregister(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("where", ["taking the pipe", "halfway out of the selector", "giving it back"])
def test_ctrl_c_while_a_caller_takes_or_gives_back_a_pipe_leaves_the_pool_whole(
    one: Pool, fifo: str, spy: _PollSpy, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """As if a signal landed there: the pipe goes back to the supervisor, and nothing waits for ever."""
    raised: list[bool] = []

    def once() -> None:
        if threading.current_thread() is threading.main_thread() and not raised:
            raised.append(True)
            raise KeyboardInterrupt

    future = submit_direct(one, fifo)
    if where == "taking the pipe":
        selector = one._supervisor._selector
        real_unregister = selector.unregister

        def unregister(fileobj: Any) -> Any:
            once()
            return real_unregister(fileobj)

        monkeypatch.setattr(selector, "unregister", unregister)
    elif where == "halfway out of the selector":
        selector = one._supervisor._selector
        monkeypatch.setattr(selector, "_selector", _RawPoller(selector._selector, once))  # type: ignore[attr-defined]
    else:
        real_watch = Supervisor._watch_again

        def watch_again(self: Supervisor, worker: Any) -> None:
            once()  # before the pipe is back: it must still go back
            real_watch(self, worker)

        monkeypatch.setattr(Supervisor, "_watch_again", watch_again)
    with pytest.raises(KeyboardInterrupt):
        while True:  # until this thread tries to take the pipe (the supervisor may be awake)
            with pytest.raises(concurrent.futures.TimeoutError):
                future.result(timeout=0.01)
    monkeypatch.undo()
    assert future.running()
    release(fifo, "whole")
    assert future.result(timeout=TIMEOUT) == "whole"
    assert [one.submit(square, i).result(timeout=TIMEOUT) for i in range(20)] == [i * i for i in range(20)]
    stats = one.stats()
    assert (stats.restarts, stats.cancelled, stats.running) == (0, 0, 0)


def test_ctrl_c_while_a_caller_handles_a_reply_ends_that_task_and_its_worker(
    one: Pool, fifo: str, spy: _PollSpy, monkeypatch: pytest.MonkeyPatch
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

    future = submit_direct(one, fifo)
    engage(future, spy)
    monkeypatch.setattr(Supervisor, "_handle_frames", interrupted)
    releaser = release_when(spy.waiting, fifo)
    with pytest.raises(KeyboardInterrupt):
        future.result(timeout=TIMEOUT)
    releaser.join(TIMEOUT)
    assert raised and future.cancelled()
    assert [one.submit(square, i).result(timeout=TIMEOUT) for i in range(20)] == [i * i for i in range(20)]
    stats = one.stats()
    assert stats.restarts == 1
    assert stats.submitted == stats.done + stats.cancelled
    assert stats.cancelled == 1


def test_a_caller_reads_directly_only_in_its_own_process(one: Pool, fifo: str) -> None:
    """A fork of the caller has no supervisor: it must not read the parent's workers' pipes."""
    future = submit_direct(one, fifo)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover  # the child's code
        try:
            future.result(timeout=0.05)
            outcome = b"read"
        except concurrent.futures.TimeoutError:
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
    release(fifo, "parent's")
    assert future.result(timeout=TIMEOUT) == "parent's"


def test_both_ends_spin_only_for_a_function_measured_short_with_cpus_free() -> None:
    def worker(name: str | None) -> SimpleNamespace:
        return SimpleNamespace(outstanding=deque([] if name is None else [SimpleNamespace(name=name)]))

    reader = worker("short")  # its task on the way
    owner: Any = SimpleNamespace(_paces=Paces(), _workers=[reader, worker(None)], _cpus=3)
    assert Direct._spin_for(owner, "short", reader) == 0  # never measured
    owner._paces.note("short", SPIN / 2)
    assert Direct._spin_for(owner, "short", reader) == SPIN
    owner._workers.append(worker("other"))  # a CPU each for it, the caller and the worker
    assert Direct._spin_for(owner, "short", reader) == SPIN
    owner._workers.append(worker("third"))  # one CPU short
    assert Direct._spin_for(owner, "short", reader) == 0
    owner._workers.pop()
    owner._paces.note("short", 100 * SPIN)  # measured long now
    assert Direct._spin_for(owner, "short", reader) == 0


def test_a_reader_spins_briefly_for_a_short_function_then_sleeps_until_the_reply(
    fifo: str, spy: _PollSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    spins: list[float] = []
    real = pool._direct.spin

    def counted(poller: Any, seconds: float) -> list[tuple[int, int]]:
        spins.append(seconds)
        return real(poller, seconds)

    monkeypatch.setattr(pool._direct, "spin", counted)
    with Pool(1) as p:
        p._supervisor._clock = lambda: 0.0  # every call measures 0 s: short
        p._supervisor._cpus = 2  # one for the caller, one for the worker, whatever runs the test
        first = p.submit(read_fifo, fifo)
        release(fifo, "measured")
        assert first.result(timeout=TIMEOUT) == "measured"
        held = submit_direct(p, fifo)
        spins.clear()
        spy.waiting.clear()
        # Released only once the reader sleeps: a spin that never ended would time out.
        releaser = release_when(spy.waiting, fifo, "late")
        assert held.result(timeout=TIMEOUT) == "late"
        releaser.join(TIMEOUT)
        assert spins == [SPIN]


def _record_sent_spins(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The spin each direct send asks of its worker, in order."""
    sent: list[float] = []
    real = pool._direct._encode

    def recorded(worker: Any, tasks: Any, spin: float = 0.0) -> bytes:
        sent.append(spin)
        return real(worker, tasks, spin)

    monkeypatch.setattr(pool._direct, "_encode", recorded)
    return sent


def test_a_worker_spins_for_its_next_task_only_when_asked_by_a_direct_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _record_sent_spins(monkeypatch)
    log = str(tmp_path / "spins")
    with Pool(1) as p:
        p._supervisor._clock = lambda: 0.0  # every call measures 0 s: short
        p._supervisor._cpus = 2
        p.submit(record_spins, log).result(timeout=TIMEOUT)
        for i in range(100):  # square measured, then read directly, then sent with a spin
            assert p.submit(square, i).result(timeout=TIMEOUT) == i * i
            if SPIN in sent:
                break
        # The second of two is sent by the supervisor, in a batch: no spin.
        first, second = p.submit(square, 2), p.submit(square, 3)
        assert (first.result(timeout=TIMEOUT), second.result(timeout=TIMEOUT)) == (4, 9)
        # The worker wrote each spin down before it read its next task.
        spun = p.submit(read_lines, log).result(timeout=TIMEOUT)
    assert SPIN in sent
    assert spun == [str(s) for s in sent if s]


def test_a_worker_does_not_spin_for_callers_whose_replies_go_to_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = _record_sent_spins(monkeypatch)
    with Pool(1) as p:
        p._supervisor._clock = lambda: 0.0  # every call measures 0 s: short
        p._supervisor._cpus = 2
        for i in range(100):
            assert p.submit(square, i).result(timeout=TIMEOUT) == i * i
            if SPIN in sent:
                break
        assert SPIN in sent
        del sent[:]
        for i in range(200):  # until a few went straight to the worker
            ended = threading.Event()
            future = p.submit(square, i)
            future.add_done_callback(lambda _, ended=ended: ended.set())  # type: ignore[misc]
            assert ended.wait(TIMEOUT)
            if len(sent) >= 3:
                break
        # The first may still ask for one: the last reply before it was read directly.
        assert len(sent) >= 2
        assert sent[1:] == [0.0] * (len(sent) - 1)
