"""The public API is a promise: names, types, pickling and the Executor contract."""

from __future__ import annotations

import concurrent.futures
import inspect
import pickle
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest

import pool
from pool import (
    Future,
    InitializerFailed,
    Pool,
    PoolClosed,
    PoolError,
    RemoteError,
    SerializationError,
    TaskTimeout,
    WorkerLost,
)

PUBLIC = (
    "BatchResult",
    "FailedItem",
    "Future",
    "InitializerFailed",
    "Pipeline",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolStats",
    "PoolView",
    "RemoteError",
    "SerializationError",
    "StageStats",
    "TaskTimeout",
    "WorkerLost",
    "WorkerStats",
    "batch",
)


def test_all_is_pinned() -> None:
    assert pool.__all__ == PUBLIC
    for name in PUBLIC:
        obj = getattr(pool, name)
        assert obj.__module__ == "pool", name


def test_hierarchy() -> None:
    assert issubclass(Pool, concurrent.futures.Executor)
    assert issubclass(WorkerLost, BrokenProcessPool)
    assert issubclass(InitializerFailed, BrokenProcessPool)
    assert issubclass(TaskTimeout, TimeoutError)
    assert issubclass(TaskTimeout, concurrent.futures.TimeoutError)
    assert issubclass(PoolClosed, RuntimeError)
    for error in (WorkerLost, TaskTimeout, RemoteError, SerializationError, PoolClosed, InitializerFailed):
        assert issubclass(error, PoolError)


def test_a_future_starts_as_a_concurrent_futures_future_does() -> None:
    """Its __init__ is written out, with a lighter condition: it must set what the base class's sets."""
    ours, theirs = Future(), concurrent.futures.Future()  # type: ignore[var-annotated]
    assert vars(ours).keys() == vars(theirs).keys()
    assert {k: v for k, v in vars(ours).items() if k != "_condition"} == {
        k: v for k, v in vars(theirs).items() if k != "_condition"
    }
    bound = {"acquire", "release", "_release_save", "_acquire_restore", "_is_owned"}  # methods, on ours
    assert vars(ours._condition).keys() == vars(theirs._condition).keys() - bound
    assert isinstance(ours._condition, threading.Condition)
    # Its lock is reentrant and its own, as the base class's.
    with ours._condition, ours._condition:
        assert ours._condition._is_owned()
        assert not Future()._condition._is_owned()
    assert not ours._condition._is_owned()
    ours.set_result(1)  # notify_all, as the base class's set_result calls it
    assert ours.result(timeout=0) == 1


def test_a_future_wakes_every_kind_of_waiter() -> None:
    """Through its condition: result() and exception() in other threads, wait and as_completed."""
    future: Future[int] = Future()
    got: list[object] = []
    waiters = [
        threading.Thread(target=lambda: got.append(future.result(timeout=60))),
        threading.Thread(target=lambda: got.append(future.exception(timeout=60))),
        threading.Thread(target=lambda: got.append(concurrent.futures.wait([future], timeout=60).done)),
        threading.Thread(
            target=lambda: got.append(list(concurrent.futures.as_completed([future], timeout=60)))
        ),
    ]
    for waiter in waiters:
        waiter.start()
    with future._condition, future._condition:  # reentrant: taken a third time inside
        future.set_running_or_notify_cancel()
    future.set_result(7)
    for waiter in waiters:
        waiter.join(60)
    assert sorted(map(repr, got)) == sorted(map(repr, [7, None, {future}, [future]]))


EXAMPLES = [
    WorkerLost(123, -9, "mod.fn", attempts=3, hint="likely out of memory"),
    WorkerLost(None, None),
    TaskTimeout("mod.fn", 1.5, 77),
    RemoteError("mod.Error", "message", "Traceback ...\n"),
    SerializationError("cannot pickle argument 0"),
    PoolClosed("closed"),
    InitializerFailed("init failed", "Traceback ...\n"),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_pickles(error: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_worker_lost_message() -> None:
    error = WorkerLost(123, -9, "mod.fn", attempts=2, hint="likely out of memory")
    assert str(error) == (
        "worker (pid 123) died with signal SIGKILL while running mod.fn after 2 attempts "
        "(likely out of memory)"
    )
    assert error.signal is not None and error.signal.name == "SIGKILL"
    assert WorkerLost(5, 3).signal is None
    assert "exit code 3" in str(WorkerLost(5, 3))


def test_pool_accepts_process_pool_executor_arguments() -> None:
    ours = inspect.signature(Pool)
    theirs = inspect.signature(concurrent.futures.ProcessPoolExecutor)
    for name, parameter in theirs.parameters.items():
        assert name in ours.parameters, name
        assert ours.parameters[name].kind == parameter.kind, name
    for method in ("submit", "map", "shutdown"):
        theirs_m = inspect.signature(getattr(concurrent.futures.ProcessPoolExecutor, method))
        ours_m = inspect.signature(getattr(Pool, method))
        for name in theirs_m.parameters:
            assert name in ours_m.parameters, (method, name)


def test_bad_constructor_arguments() -> None:
    for kwargs, error in [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -2}, ValueError),
        ({"max_workers": 1.5}, TypeError),
        ({"max_workers": "2"}, TypeError),
        ({"mp_context": "no-such-method"}, ValueError),
        ({"mp_context": 3}, TypeError),
        ({"task_timeout": -1}, ValueError),
        ({"retries": -1}, ValueError),
    ]:
        with pytest.raises(error):
            Pool(**kwargs)  # type: ignore[arg-type]


def test_repr() -> None:
    p = Pool(3)
    assert repr(p) == "<pool.Pool max_workers=3 running>"
    p.shutdown()
    assert "shut down" in repr(p)
