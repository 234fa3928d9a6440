"""One adapter per library: the same four calls over each library's natural API.

The peers are held as ``Any``: their type information differs from one
version to the next, and only these few calls are made on them.

`submit` uses what a user of that library would write for one task
(`submit`, `apply_async`, `schedule`); `map` uses the library's own `map`
with its default settings, chunk size included. Each adapter is opened and
closed within one child process, so nothing is shared between libraries.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, cast

Waiter = Callable[[], Any]  # blocks until the task is done, returns its result


class Library(ABC):
    key: ClassVar[str]  # name on the command line and in the JSON
    label: ClassVar[str]  # column heading
    module: ClassVar[str]  # what to import
    distribution: ClassVar[str]  # what to ask the version of
    optional: ClassVar[bool] = True  # comes with the `bench` extra

    @abstractmethod
    def open(self, workers: int) -> None:
        """Create the pool with the library's defaults (start method included)."""

    @abstractmethod
    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        """Start ``fn(arg)``; return a call that waits for its result."""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        """``fn`` over ``items`` in order, with the library's default settings."""

    @abstractmethod
    def close(self) -> None:
        """Shut the pool down gracefully, waiting for its workers to exit."""

    @classmethod
    def start_method(cls) -> str:
        return multiprocessing.get_start_method()

    @classmethod
    def installed(cls) -> bool:
        return importlib.util.find_spec(cls.module) is not None

    @classmethod
    def version(cls) -> str:
        try:
            return importlib.metadata.version(cls.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "checkout"


class PoolLibrary(Library):
    key, label, module, distribution, optional = "pool", "pool", "pool", "pool", False

    def open(self, workers: int) -> None:
        from pool import Pool

        self._pool = Pool(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        return self._pool.submit(fn, arg).result

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        return self._pool.map(fn, items)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    @classmethod
    def start_method(cls) -> str:
        methods = multiprocessing.get_all_start_methods()
        return "forkserver" if "forkserver" in methods else "spawn"  # as its README says

    @classmethod
    def version(cls) -> str:
        try:  # the checkout, which others may be editing
            import pool
        except (ImportError, SyntaxError) as error:
            return f"(does not import: {error})"
        return pool.__version__


class ExecutorLibrary(Library):
    key, label, module, distribution, optional = (
        "ppe",
        "PPE",
        "concurrent.futures",
        "python",
        False,
    )

    def open(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self._executor = ProcessPoolExecutor(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        return self._executor.submit(fn, arg).result

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        return self._executor.map(fn, items)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    @classmethod
    def version(cls) -> str:
        import platform

        return platform.python_version()


class MultiprocessingLibrary(Library):
    key, label, module, distribution, optional = (
        "mp",
        "mp.Pool",
        "multiprocessing",
        "python",
        False,
    )

    def open(self, workers: int) -> None:
        self._pool = multiprocessing.Pool(processes=workers)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        return self._pool.apply_async(fn, (arg,)).get

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        return self._pool.map(fn, items)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    @classmethod
    def version(cls) -> str:
        import platform

        return platform.python_version()


class LokyLibrary(Library):
    key, label, module, distribution = "loky", "loky", "loky", "loky"

    def open(self, workers: int) -> None:
        import loky

        # Its documented entry point; in a fresh process it makes a fresh executor.
        self._executor: Any = loky.get_reusable_executor(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        return cast(Waiter, self._executor.submit(fn, arg).result)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        return cast(Iterable[Any], self._executor.map(fn, items))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    @classmethod
    def start_method(cls) -> str:
        return "loky"  # its own: fork + exec, as spawn


class PebbleLibrary(Library):
    key, label, module, distribution = "pebble", "pebble", "pebble", "pebble"

    def open(self, workers: int) -> None:
        import pebble

        self._pool: Any = pebble.ProcessPool(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        return cast(Waiter, self._pool.schedule(fn, args=(arg,)).result)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        return cast(Iterable[Any], self._pool.map(fn, items).result())

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


class MpireLibrary(Library):
    key, label, module, distribution = "mpire", "mpire", "mpire", "mpire"

    def open(self, workers: int) -> None:
        from mpire.pool import WorkerPool

        # Workers start at the first task. A pool runs either apply_async or
        # map tasks, not both: each workload uses one of them only.
        self._pool: Any = WorkerPool(n_jobs=workers)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Waiter:
        return cast(Waiter, self._pool.apply_async(fn, args=(arg,)).get)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterable[Any]:
        return cast(Iterable[Any], self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.stop_and_join()

    @classmethod
    def start_method(cls) -> str:
        return "fork"  # WorkerPool's default, on every platform


LIBRARIES: dict[str, type[Library]] = {
    cls.key: cls
    for cls in (
        PoolLibrary,
        ExecutorLibrary,
        MultiprocessingLibrary,
        LokyLibrary,
        PebbleLibrary,
        MpireLibrary,
    )
}
PEERS = tuple(key for key in LIBRARIES if key != "pool")
