"""pool: a process pool that never hangs, never loses a task, and says what went wrong.

The public API is re-exported here; every other module is private.
"""

from ._errors import InitializerFailed as InitializerFailed
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolError as PoolError
from ._errors import RemoteError as RemoteError
from ._errors import SerializationError as SerializationError
from ._errors import TaskTimeout as TaskTimeout
from ._errors import WorkerLost as WorkerLost
from ._futures import Future as Future
from ._pipeline import FailedItem as FailedItem
from ._pipeline import Pipeline as Pipeline
from ._pipeline import StageStats as StageStats
from ._pool import Pool as Pool
from ._pool import PoolView as PoolView

__version__ = "0.1.0"

__all__ = (
    "FailedItem",
    "Future",
    "InitializerFailed",
    "Pipeline",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolView",
    "RemoteError",
    "SerializationError",
    "StageStats",
    "TaskTimeout",
    "WorkerLost",
)
