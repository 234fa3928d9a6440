"""Chaos: thousands of tasks while a thread SIGKILLs random workers.

With enough retries every task returns its right result, exactly once.
Without retries every task still ends, in its right result or in
`WorkerLost` (blamed on a worker the killer really killed, one task per
kill), and nothing hangs. After each storm the pool serves new work with
its full set of workers and shuts down cleanly; the autouse fixture in
conftest checks that no process is left behind.

The killer is paced by completed work, never by the clock: one kill is owed
after every ``every`` completed futures (their done callbacks tick it). The
work is submitted in waves, and a wave goes in only once the kills owed by
the waves before it were made, so every kill lands while work is queued,
on a fast machine as on a busy one. Random choices come from seeded
generators. The killer aims only at workers that finished starting; kills
of starting workers have a test of their own, at the end.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from _support import Handshake, worker_pids
from _tasks import add, announce, sleep_then, square

from pool import InitializerFailed, Pool, PoolView, WorkerLost

WORKERS = 2

# Generous: only a hang ever waits this long.
RESULT_TIMEOUT = 60.0


class Killer:
    """A thread that SIGKILLs a random current worker each time a kill is owed.

    ``tick()`` counts one completed unit of work; every ``every`` ticks one
    more kill is owed, up to ``max_kills``. A kill is never aimed twice at the
    same pid: a worker killed but not yet replaced is still listed by the
    pool, and killing its corpse would prove nothing. When no listed worker
    is left to aim at, the kill waits for the next tick.

    Only workers that finished starting are aimed at: three kills in a row
    of workers still starting break the pool for good, a bug shown on its
    own, deterministically, by `test_kills_of_starting_workers_do_not_break_the_pool`.
    """

    def __init__(self, p: Pool, *, every: int, max_kills: int, seed: int) -> None:
        self._pool = p
        self._every = every
        self._max_kills = max_kills
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._ticks = 0
        self._retry_after = -1  # no target at this tick count: wait for a newer one
        self._stopped = False
        self.killed: list[int] = []  # pids that received our SIGKILL
        self.missed = 0  # pids that had exited already (ProcessLookupError)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)

    @property
    def attempts(self) -> int:
        return len(self.killed) + self.missed

    def start(self) -> Killer:
        self._thread.start()
        return self

    def tick(self, _: object = None) -> None:
        """One unit of work completed; short, so usable as a done callback."""
        with self._cond:
            self._ticks += 1
            self._cond.notify_all()

    def wait_attempts(self, count: int) -> None:
        """Block until ``count`` kills were made; fail, not hang, if they never are."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self.attempts >= count or self.error is not None, RESULT_TIMEOUT
            )
        if self.error is not None:
            raise self.error
        assert done, f"kill {count} never came: {self._ticks} ticks, {self.attempts} kills"

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(RESULT_TIMEOUT)
        assert not self._thread.is_alive(), "the killer thread did not stop"
        if self.error is not None:
            raise self.error

    def _owed(self) -> bool:
        owed = min(self._max_kills, self._ticks // self._every)
        return owed > self.attempts and self._ticks > self._retry_after

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopped or self._owed())
                    if self._stopped:
                        return
                    ticks = self._ticks
                already = set(self.killed)
                targets = sorted(pid for pid in _ready_worker_pids(self._pool) if pid not in already)
                if not targets:
                    self._retry_after = ticks
                    continue
                pid = self._rng.choice(targets)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    outcome = "missed"
                else:
                    outcome = "killed"
                with self._cond:
                    if outcome == "killed":
                        self.killed.append(pid)
                    else:
                        self.missed += 1
                    self._cond.notify_all()
        except BaseException as exc:  # re-raised in the test's thread
            with self._cond:
                self.error = exc
                self._cond.notify_all()


def _ready_worker_pids(p: Pool) -> list[int]:
    """Like `worker_pids`, only the workers that said they are ready (private)."""
    return [w.pid for w in list(p._supervisor._workers) if w.ready and w.pid is not None]


def _make_cpu() -> Callable[[int], int]:
    def cpu(n: int) -> int:
        return sum(i * i for i in range(n))

    return cpu


# Made by a function, so cloudpickle sends it by value: workers never import this module.
_cpu = _make_cpu()


class Drain:
    """Consumes an iterator in a thread; `result` fails, not hangs, if it never ends."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self._iterator = iterator
        self._thread = threading.Thread(target=self._run, name="chaos-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._iterator:
                self.items.append(item)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 2 * RESULT_TIMEOUT) -> tuple[list[Any], BaseException | None]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"iteration hung after {len(self.items)} items"
        return self.items, self.error


Call = tuple[Callable[..., Any], tuple[Any, ...], Any]  # fn, args, expected result


def _mixed_calls(rng: random.Random, count: int) -> list[Call]:
    """Tiny calls and slightly longer ones (a few ms of sleep or of CPU)."""
    calls: list[Call] = []
    for i in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            calls.append((square, (i,), i * i))
        elif kind == 1:
            calls.append((add, (i, 7), i + 7))
        elif kind == 2:
            seconds = rng.choice((0.0005, 0.001, 0.002, 0.005))
            calls.append((sleep_then, (seconds, ("slept", i)), ("slept", i)))
        else:
            n = rng.randrange(1000, 20000)
            calls.append((_cpu, (n,), _cpu(n)))
    return calls


def _submit_in_waves(
    view: Pool | PoolView, calls: list[Call], killer: Killer, waves: int
) -> list[Future[Any]]:
    """Submit ``calls`` in ``waves`` waves, a kill owed after each but the last.

    The killer must tick once per call and owe a kill per wave
    (``every=len(calls) // waves``). Kill ``k`` is owed once the first ``k``
    waves completed, and wave ``k + 1`` goes in only once kill ``k`` was
    made: so when a kill comes, the wave after it is queued and the workers
    are busy, however fast or slow the machine.
    """
    size = len(calls) // waves
    futures: list[Future[Any]] = []
    for wave in range(waves):
        if wave >= 2:
            killer.wait_attempts(wave - 1)
        for fn, args, _ in calls[wave * size : (wave + 1) * size if wave < waves - 1 else None]:
            future = view.submit(fn, *args)
            future.add_done_callback(killer.tick)
            futures.append(future)
    return futures


def _make_pid_after() -> Callable[[float], int]:
    def pid_after(seconds: float) -> int:
        time.sleep(seconds)  # simulated work
        return os.getpid()

    return pid_after


def _assert_healthy(p: Pool, killed: list[int]) -> None:
    """New work runs, on exactly WORKERS live workers, none of them a killed one."""
    futures = [p.submit(square, i) for i in range(50)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * i for i in range(50)]
    assert list(p.map(add, range(100), range(100), timeout=RESULT_TIMEOUT)) == [2 * i for i in range(100)]

    # The last replacement may still be starting: run rounds of work until
    # WORKERS distinct workers took some (the pool gives each task to its
    # least loaded ready worker, and each task lasts 5 ms, so a round
    # reaches every ready worker). A pool short of a worker fails here.
    pid_after = _make_pid_after()
    seen: set[int] = set()
    deadline = time.monotonic() + RESULT_TIMEOUT
    while len(seen) < WORKERS:
        assert time.monotonic() < deadline, f"only {sorted(seen)} ever served; workers {worker_pids(p)}"
        round_ = [p.submit(pid_after, 0.005) for _ in range(2 * WORKERS)]
        seen.update(f.result(timeout=RESULT_TIMEOUT) for f in round_)
    assert len(seen) == WORKERS
    # Both served after the storm, so both are the pool's current workers,
    # and no killed worker is still listed.
    assert sorted(worker_pids(p)) == sorted(seen)
    assert not seen & set(killed)


def _shutdown(p: Pool) -> None:
    """shutdown(wait=True) returns, and the supervisor is gone."""
    thread = threading.Thread(target=p.shutdown, kwargs={"wait": True}, daemon=True)
    thread.start()
    thread.join(RESULT_TIMEOUT)
    assert not thread.is_alive(), "shutdown(wait=True) hung"
    assert not p._supervisor.alive


def _make_item() -> Callable[[int], tuple[int, int]]:
    def item(i: int) -> tuple[int, int]:
        return i, _cpu(200 + i % 300)

    return item


_item = _make_item()  # sent by value, as _cpu


# --- with retries: every result right, exactly once ----------------------------


@pytest.mark.parametrize(
    ("mp_context", "n_submit", "n_map", "kills"),
    [
        pytest.param(None, 3000, 2000, 30, id="default"),
        pytest.param("spawn", 600, 300, 6, id="spawn"),
    ],
)
def test_chaos_with_retries(mp_context: str | None, n_submit: int, n_map: int, kills: int) -> None:
    p = Pool(WORKERS, mp_context=mp_context)
    try:
        # A task is hit by at most every kill.
        view = p.options(retries=kills)
        calls = _mixed_calls(random.Random(1234), n_submit)
        killer = Killer(p, every=n_submit // (kills + 1), max_kills=kills, seed=5678).start()
        try:
            # Read lazily, so its chunks mix with the waves of submits.
            unordered = Drain(view.imap_unordered(_item, (i for i in range(n_map))))
            ordered = Drain(view.map(_item, (i for i in range(n_map)), timeout=2 * RESULT_TIMEOUT))
            futures = _submit_in_waves(view, calls, killer, kills + 1)
            # Sized: every chunk submitted at once, behind the waves.
            sized = Drain(view.map(square, list(range(n_map)), timeout=2 * RESULT_TIMEOUT))
            results = [f.result(timeout=RESULT_TIMEOUT) for f in futures]
            got_unordered, unordered_error = unordered.result()
            got_ordered, ordered_error = ordered.result()
            got_sized, sized_error = sized.result()
        finally:
            killer.stop()

        assert killer.attempts == kills
        assert len(killer.killed) >= kills - 2, (killer.killed, killer.missed)
        assert (unordered_error, ordered_error, sized_error) == (None, None, None)
        # Each item exactly once, with its right value.
        expected_items = [_item(i) for i in range(n_map)]
        assert len(got_unordered) == n_map
        assert collections.Counter(got_unordered) == collections.Counter(expected_items)
        assert got_ordered == expected_items
        assert got_sized == [i * i for i in range(n_map)]
        assert len(results) == len(futures) == n_submit
        wrong = [(i, r, c[2]) for i, (r, c) in enumerate(zip(results, calls, strict=True)) if r != c[2]]
        assert not wrong, wrong[:5]

        _assert_healthy(p, killer.killed)
    finally:
        p.shutdown(wait=False, cancel_futures=True)
    _shutdown(p)


# --- without retries: a result or WorkerLost, never a hang ---------------------


@pytest.mark.parametrize(
    ("mp_context", "n_submit", "n_map", "kills"),
    [
        pytest.param(None, 3000, 2000, 30, id="default"),
        pytest.param("spawn", 600, 300, 6, id="spawn"),
    ],
)
def test_chaos_without_retries(mp_context: str | None, n_submit: int, n_map: int, kills: int) -> None:
    p = Pool(WORKERS, mp_context=mp_context)
    try:
        calls = _mixed_calls(random.Random(4321), n_submit)
        killer = Killer(p, every=n_submit // (kills + 1), max_kills=kills, seed=8765).start()
        try:
            ordered = Drain(p.map(_item, (i for i in range(n_map)), timeout=2 * RESULT_TIMEOUT))
            futures = _submit_in_waves(p, calls, killer, kills + 1)
            outcomes: list[Any] = []
            for future in futures:
                try:
                    outcomes.append(future.result(timeout=RESULT_TIMEOUT))
                except BaseException as exc:
                    outcomes.append(exc)
            got_ordered, ordered_error = ordered.result()
        finally:
            killer.stop()

        assert killer.attempts == kills
        assert len(killer.killed) >= kills - 2, (killer.killed, killer.missed)

        lost: list[WorkerLost] = []
        for i, (outcome, (_, _, expected)) in enumerate(zip(outcomes, calls, strict=True)):
            if isinstance(outcome, WorkerLost):
                lost.append(outcome)
            else:
                assert not isinstance(outcome, BaseException), (i, repr(outcome))
                assert outcome == expected, (i, outcome, expected)
        # A map without retries ends at its first lost chunk; what it gave
        # before is the start of the right output.
        assert got_ordered == [_item(i) for i in range(len(got_ordered))]
        if ordered_error is None:
            assert len(got_ordered) == n_map
        else:
            assert isinstance(ordered_error, WorkerLost), repr(ordered_error)
            lost.append(ordered_error)

        # Only the task a killed worker was running fails, once per kill.
        assert lost, "no kill hit a task: the chaos did nothing"
        assert len(lost) <= len(killer.killed)
        blamed = collections.Counter(e.pid for e in lost)
        assert set(blamed) <= set(killer.killed), (blamed, killer.killed)
        assert max(blamed.values()) == 1, blamed
        assert {e.exitcode for e in lost} == {-signal.SIGKILL}
        assert all(f.done() and not f.cancelled() for f in futures)

        _assert_healthy(p, killer.killed)
    finally:
        p.shutdown(wait=False, cancel_futures=True)
    _shutdown(p)


# --- kills of workers that are still starting ------------------------------------


def _make_gate() -> Callable[[str, str, str], None]:
    """An initializer that announces the starting worker twice, unless ``open_path`` exists.

    Between the two announcements the worker is certainly not ready: it
    says so only after its initializer returned, and the second
    announcement blocks until the test reads it.
    """

    def gate(first: str, second: str, open_path: str) -> None:
        if not os.path.exists(open_path):
            announce(first)
            announce(second)

    return gate


def _read_pids(handshake: Handshake, count: int) -> list[int]:
    """Collect ``count`` announcements from a FIFO several processes may write at once."""
    pids: list[int] = []
    while len(pids) < count:
        with open(handshake.path) as fifo:  # blocks until a writer opens it
            pids.extend(int(line.split()[0]) for line in fifo if line.strip())
    return pids


def _make_hold() -> Callable[[str, str], int]:
    """A task that announces itself, then waits until the test releases it."""

    def hold(announce_path: str, release_path: str) -> int:
        announce(announce_path)
        with open(release_path) as fifo:
            fifo.readline()
        return os.getpid()

    return hold


@pytest.mark.timeout(60)
def test_kills_of_starting_workers_do_not_break_the_pool(tmp_path: Path) -> None:
    """An outside SIGKILL of a worker still starting is not a failure to start.

    One worker is healthy, ready and busy throughout; its sibling is killed,
    then each of its replacements is killed in turn while it runs its
    (succeeding) initializer. Nothing failed to start: something killed the
    processes. The pool must go on, and run new work once a replacement
    gets through.
    """
    first, second = Handshake(tmp_path), Handshake(tmp_path)
    running, release = Handshake(tmp_path), Handshake(tmp_path)
    open_path = tmp_path / "gate-open"
    p = Pool(WORKERS, initializer=_make_gate(), initargs=(first.path, second.path, str(open_path)))
    try:
        # Busy with a task that has not finished, so nothing is queued
        # behind it: new work waits for the other worker.
        held = p.submit(_make_hold(), running.path, release.path)
        starters = _read_pids(first, WORKERS)
        assert sorted(_read_pids(second, WORKERS)) == sorted(starters)
        healthy = _read_pids(running, 1)[0]
        try:
            [victim] = [pid for pid in starters if pid != healthy]
            os.kill(victim, signal.SIGKILL)  # ready and idle: simply replaced
            for attempt in range(3):
                victim = _read_pids(first, 1)[0]  # a replacement, inside its initializer
                assert victim not in starters
                if attempt == 2:
                    open_path.touch()  # the next replacement starts without a gate
                os.kill(victim, signal.SIGKILL)
            try:
                # Runs once the next replacement is ready.
                assert p.submit(square, 4).result(timeout=RESULT_TIMEOUT) == 16
            except InitializerFailed as exc:
                pytest.fail(
                    f"the pool broke though its worker {healthy} is fine and no start failed "
                    f"(3 starting workers were SIGKILLed from outside): {exc!r}"
                )
        finally:
            with open(release.path, "w") as fifo:  # the held task is reading it
                fifo.write("go\n")
        assert held.result(timeout=RESULT_TIMEOUT) == healthy
        assert healthy in worker_pids(p)
    finally:
        _shutdown(p)


@pytest.mark.parametrize("threads_n", [1, 4])
def test_callers_one_task_at_a_time_under_kills(threads_n: int) -> None:
    """Each caller waits for its task before the next: most go straight to an idle
    worker from the caller's thread (see pool._direct), while
    workers are killed under them. Every task returns its own result."""
    per_thread, kills = 600 // threads_n, 6
    with Pool(WORKERS) as p:
        killer = Killer(p, every=40, max_kills=kills, seed=11).start()
        view = p.options(retries=kills + 1)
        results: dict[int, list[int]] = {}
        errors: list[BaseException] = []

        def caller(base: int) -> None:
            try:
                out = results.setdefault(base, [])
                for i in range(per_thread):
                    future = view.submit(add, base, i)
                    future.add_done_callback(killer.tick)
                    out.append(future.result(timeout=RESULT_TIMEOUT))
            except BaseException as exc:  # reported by the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(1000 * t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RESULT_TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in threads)
        killer.wait_attempts(kills)  # owed by the ticks, made while the callers ran or just after
        killer.stop()
        assert not errors, errors
        for base, out in results.items():
            assert out == [base + i for i in range(per_thread)]
        assert p.submit(add, 1, 2).result(timeout=RESULT_TIMEOUT) == 3
        stats = p.stats()
        assert stats.done == threads_n * per_thread + 1
