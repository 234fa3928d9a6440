"""The messages that cross a worker's Pipe, and the function cache both ends share.

Every message is one ``send_bytes`` of a pickled tagged tuple. Tuples, not
dataclasses: a task's round trip pickles two of them, and a tuple pickles
and unpickles several times faster than a dataclass instance. Payloads
inside them (arguments, results, exceptions) are already bytes, pickled by
`pool._serialize`, so the supervisor routes a message without unpickling
what the user sent.

Commands to a worker (imperative)::

    (RUN_TASKS, [(task_id, kind, fn_id, fn_bytes | None, args_bytes, layout | None), ...], spin)
    STOP                                  # the sentinel: finish and exit

``spin`` (seconds, often 0): once it has replied to these tasks, how long
the worker polls for its next message before it sleeps (`pool._spin`).

``kind`` says what ``args_bytes`` holds: CALL, ``(args, kwargs)`` for one
call; MAP_CHUNK, a list of items, each passed as the one argument;
STARMAP_CHUNK, a list of argument tuples. A chunk's result is
``(results, exception_bytes | None, seconds)``: the results up to the first
item that raised, that item's exception, and the time the chunk took.

Events from a worker (past tense)::

    (WORKER_READY, pid)                   # initializer done, waiting for work
    (INIT_FAILED, exception_bytes)        # initializer raised; it exits next
    (TASK_DONE, task_id, result_bytes, layout | None)
    (TASK_FAILED, task_id, exception_bytes)
    (LOG_RECORD, record_dict)             # a logging record; see _worker

A ``layout`` says that the payload's big buffers are in shared memory
(`pool._segments`): the message is followed on the socket by the segments'
descriptors, one per task of a RUN_TASKS that has a layout, in order, or
the one of a TASK_DONE.

A worker runs the tasks it receives in order, one at a time, and sends each
task's event as soon as the task ends. So the supervisor never needs a
"task started" message: the oldest task it sent that has no event yet is the
one the worker is running, and if the worker dies that task, and only that
task, is to blame; the ones queued behind it never started.

Functions are sent once per worker. ``fn_id`` names a function for the life
of the pool; the first task for it on a worker carries ``fn_bytes`` and later
ones ``None``. The worker keeps the last `FUNCTION_CACHE_SIZE` functions it
was sent (`LruKeys`); the supervisor replays the same LRU over the ids it sent
to that worker, so both ends agree, without a message, on what the worker
still has. ``fn_id`` is ``None`` for callables that are not cached (see
`pool._pool`); their bytes travel with every task.
"""

from __future__ import annotations

from collections import OrderedDict

RUN_TASKS = 1
STOP = None

CALL = 0
MAP_CHUNK = 1
STARMAP_CHUNK = 2

WORKER_READY = 1
INIT_FAILED = 2
TASK_DONE = 3
TASK_FAILED = 4
LOG_RECORD = 5

# How many distinct functions a worker keeps. More costs worker memory for
# functions that are never called again (lambdas made in a loop); fewer
# re-sends functions that alternate, each at the price of a cloudpickle load.
FUNCTION_CACHE_SIZE = 128


class LruKeys:
    """A bounded set of function ids, least recently touched evicted first.

    Deterministic on purpose: two instances fed the same `touch` sequence hold
    the same keys, which is how the supervisor knows what a worker cached.
    """

    __slots__ = ("_keys", "_size")

    def __init__(self, size: int = FUNCTION_CACHE_SIZE) -> None:
        self._keys: OrderedDict[int, None] = OrderedDict()
        self._size = size

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def touch(self, key: int) -> int | None:
        """Mark ``key`` as just used; return the key evicted to make room, if any."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return None
        self._keys[key] = None
        if len(self._keys) > self._size:
            evicted, _ = self._keys.popitem(last=False)
            return evicted
        return None
