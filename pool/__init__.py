"""pool: a process pool that never hangs, never loses a task, and says what went wrong.

The public API is re-exported here; every other module is private.

The names are imported when first used, not with the package: a worker
imports ``pool._worker`` and so this package, and it needs none of the
caller's side (the supervisor, pipelines, batch jobs, tqdm, psutil). Lazy,
a fresh worker starts in about half the time. Workers do not run the
caller's main module again (see `pool._start`), so a script that
imports `Pool` does not make each worker import it too.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    from typing import Any

    from ._batch import BatchResult as BatchResult
    from ._batch import batch as batch
    from ._broken import InitializerFailed as InitializerFailed
    from ._broken import WorkerLost as WorkerLost
    from ._errors import PoolClosed as PoolClosed
    from ._errors import PoolError as PoolError
    from ._errors import RemoteError as RemoteError
    from ._errors import SerializationError as SerializationError
    from ._futures import Future as Future
    from ._pipeline import FailedItem as FailedItem
    from ._pipeline import Pipeline as Pipeline
    from ._pipeline import StageStats as StageStats
    from ._pool import Pool as Pool
    from ._pool import PoolView as PoolView
    from ._stats import PoolStats as PoolStats
    from ._stats import WorkerStats as WorkerStats
    from ._task_timeout import TaskTimeout as TaskTimeout

__version__ = "0.1.0"

# Each public name and the private module it lives in.
_HOMES = {
    "BatchResult": "_batch",
    "batch": "_batch",
    "InitializerFailed": "_broken",
    "PoolClosed": "_errors",
    "PoolError": "_errors",
    "RemoteError": "_errors",
    "SerializationError": "_errors",
    "TaskTimeout": "_task_timeout",
    "WorkerLost": "_broken",
    "Future": "_futures",
    "FailedItem": "_pipeline",
    "Pipeline": "_pipeline",
    "StageStats": "_pipeline",
    "Pool": "_pool",
    "PoolView": "_pool",
    "PoolStats": "_stats",
    "WorkerStats": "_stats",
}

__all__ = (
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
