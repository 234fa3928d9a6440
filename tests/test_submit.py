"""submit: results, remote exceptions and their tracebacks, pickling errors, futures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sys
import threading
import traceback

import pytest
from _support import Handshake
from _tasks import (
    MismatchError,
    add,
    block_forever,
    getpid,
    identity,
    raise_mismatch,
    raise_unpicklable,
    raise_value_error,
    return_unpicklable,
    square,
)

import pool
from pool import Pool, RemoteError, SerializationError


def test_result_and_arguments(pool: Pool) -> None:
    assert pool.submit(square, 7).result(timeout=60) == 49
    assert pool.submit(add, 1, 2, c=3).result(timeout=60) == 6
    assert pool.submit(add, a=1, b=2).result(timeout=60) == 3


def test_submit_returns_a_concurrent_future(pool: Pool) -> None:
    future = pool.submit(square, 3)
    assert isinstance(future, concurrent.futures.Future)
    assert isinstance(future, pool_module_future())
    done, _ = concurrent.futures.wait([future], timeout=60)
    assert done == {future}


def pool_module_future() -> type:
    return pool.Future


def test_lambdas_and_closures_run_under_every_start_method(any_pool: Pool) -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    assert any_pool.submit(lambda x: x * 3, 5).result(timeout=60) == 15
    assert any_pool.submit(closure, 5).result(timeout=60) == 15
    assert list(any_pool.map(closure, range(3))) == [10, 11, 12]


def test_exception_keeps_type_attributes_and_remote_frames(any_pool: Pool) -> None:
    future = any_pool.submit(raise_mismatch, 7, "no luck")
    with pytest.raises(MismatchError) as info:
        future.result(timeout=60)
    error = info.value
    assert (error.code, error.reason) == (7, "no luck")
    assert str(error) == "code 7: no luck"
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "raise_mismatch" in frames
    # The worker's own loop is not shown: the remote part starts in user code.
    assert "_execute" not in frames
    if sys.version_info >= (3, 11):
        assert any("raise_mismatch" in note and "pid" in note for note in error.__notes__)


def test_exception_chain_travels(pool: Pool) -> None:
    def chained() -> None:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise ValueError("outer") from exc

    with pytest.raises(ValueError, match="outer") as info:
        pool.submit(chained).result(timeout=60)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.__cause__.__traceback__ is not None


def test_unpicklable_exception_becomes_remote_error(pool: Pool) -> None:
    with pytest.raises(RemoteError) as info:
        pool.submit(raise_unpicklable, "locked in").result(timeout=60)
    error = info.value
    assert error.type_name.endswith("UnpicklableError")
    assert error.message == "locked in"
    assert "raise_unpicklable" in error.traceback
    assert "locked in" in str(error)


def test_unpicklable_result_fails_the_task_not_the_worker(pool: Pool) -> None:
    first = pool.submit(getpid).result(timeout=60)
    with pytest.raises(SerializationError, match=r"result of .*return_unpicklable.*lock"):
        pool.submit(return_unpicklable).result(timeout=60)
    pids = {pool.submit(getpid).result(timeout=60) for _ in range(10)}
    assert first in pids or len(pids) <= 2  # no worker was replaced


def test_unpicklable_argument_fails_at_submit_naming_it(pool: Pool) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"keyword argument 'b'.*lock"):
        pool.submit(add, 1, b=lock)
    with pytest.raises(SerializationError, match=r"argument 0"):
        pool.submit(square, lock)
    assert pool.submit(square, 2).result(timeout=60) == 4


def test_unpicklable_function_fails_at_submit(pool: Pool) -> None:
    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __call__(self) -> int:
            return 1

    with pytest.raises(SerializationError, match="cannot pickle the function"):
        pool.submit(Holder())


def test_non_callable_is_rejected(pool: Pool) -> None:
    with pytest.raises(TypeError, match="callable"):
        pool.submit(42)  # type: ignore[arg-type]


def test_system_exit_in_a_task_fails_that_task_only(pool: Pool) -> None:
    with pytest.raises(SystemExit):
        pool.submit(sys.exit, 4).result(timeout=60)
    assert pool.submit(square, 3).result(timeout=60) == 9


def test_cancel_a_queued_task(handshake: Handshake) -> None:
    with Pool(1) as p:
        running = p.submit(block_forever, handshake.path)
        pid = handshake.wait_pid()
        queued = p.submit(square, 2)
        assert queued.cancel()
        assert queued.cancelled()
        assert not running.cancel()  # already running
        p.shutdown(wait=False, cancel_futures=True)
        assert not running.done()  # shutting down does not drop a running task
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(pool.WorkerLost):
            running.result(timeout=60)


def test_await_a_future(pool: Pool) -> None:
    async def main() -> list[int]:
        return list(await asyncio.gather(*(pool.submit(square, i) for i in range(5))))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_await_a_failing_future(pool: Pool) -> None:
    async def main() -> None:
        await pool.submit(raise_value_error, "async boom")

    with pytest.raises(ValueError, match="async boom"):
        asyncio.run(main())


def test_run_in_executor(pool: Pool) -> None:
    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(pool, square, 6)

    assert asyncio.run(main()) == 36


def test_as_completed_and_many_tasks(pool: Pool) -> None:
    futures = [pool.submit(square, i) for i in range(500)]
    results = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=120))
    assert results == sorted(i * i for i in range(500))


def test_submit_from_many_threads(pool: Pool) -> None:
    out: list[int] = []
    lock = threading.Lock()

    def client(base: int) -> None:
        futures = [pool.submit(square, base + i) for i in range(50)]
        values = [f.result(timeout=60) for f in futures]
        with lock:
            out.extend(values)

    threads = [threading.Thread(target=client, args=(100 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(out) == sorted((100 * t + i) ** 2 for t in range(4) for i in range(50))


def test_large_arguments_and_results(pool: Pool) -> None:
    """Bigger than any pipe buffer, in both directions, with others in flight."""
    blob = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    small = [pool.submit(square, i) for i in range(20)]
    big = [pool.submit(identity, blob) for _ in range(3)]
    assert all(f.result(timeout=120) == blob for f in big)
    assert [f.result(timeout=60) for f in small] == [i * i for i in range(20)]


def test_plain_and_other_arguments_arrive_alike(pool: Pool) -> None:
    """Plain values take a faster pickler than the rest; both must arrive the same."""

    class Count(int):  # an int subclass, local: only cloudpickle can send it
        pass

    plain = (1, 2.5, "s", True, None, 3j, b"b" * 4096)
    assert [pool.submit(identity, value).result(timeout=60) for value in plain] == list(plain)
    assert pool.submit(identity, plain).result(timeout=60) == plain  # a tuple: the other pickler
    assert pool.submit(add, 1, b=2, c=3).result(timeout=60) == 6
    back = pool.submit(identity, Count(7)).result(timeout=60)
    assert back == 7 and type(back).__name__ == "Count"
    assert pool.submit(identity, b"x" * 5000).result(timeout=60) == b"x" * 5000
