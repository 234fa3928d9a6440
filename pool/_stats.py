"""`Pool.stats`: what the pool has done and what each worker is doing now.

Two halves, by thread. The supervisor thread owns the workers and the
queue, so it takes the census (`PoolStats` with every count, and each
worker's pid, state and task) between two events; see
`Supervisor.stats`. The caller's thread then reads each worker's memory and
CPU time from the operating system (`with_usage`): reading /proc for a
process tree takes far longer than a task's round trip, and the thread
that serves every task must not wait for it.

The counts behind the census live in a `pool._tally.Tally`, written where
futures end (`pool._outcomes` and the supervisor); see it for who writes
what. This module (dataclasses, and inspect with them) loads with the first
``stats()``, not with the pool.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._memory import tree_rss

__all__ = ["PoolStats", "WorkerStats", "with_usage"]


@dataclass(frozen=True)
class WorkerStats:
    """One worker process, as `Pool.stats` found it.

    ``state`` is ``"starting"`` (not ready for work yet: starting up or
    running the initializer), ``"idle"``, ``"busy"`` (running ``task``, the
    name of its function) or ``"stopping"`` (recycled, killed or shut down,
    on its way out). ``tasks_done`` counts the tasks it ran to an end, with
    a result or an exception. ``rss`` is the resident memory in bytes of the
    worker with every process it started, ``cpu_seconds`` the worker's own
    user plus system CPU time; either is None when it cannot be read (the
    process has just gone).
    """

    __module__ = "pool"

    pid: int
    state: str
    task: str | None
    tasks_done: int
    rss: int | None
    cpu_seconds: float | None


@dataclass(frozen=True)
class PoolStats:
    """The counts of a `Pool` at one moment, from `Pool.stats`.

    ``submitted`` counts tasks ever submitted: one per ``submit``, one per
    chunk of a ``map``. Each of them is, at that moment, in exactly one of:
    ``queued`` (waiting: to be sent to a worker, including a task put back
    to run again after its worker died, or in a worker's pipe behind the
    task it runs, as short tasks are sent ahead), ``running`` (the task
    each worker runs),
    ``done`` (ended with a result), ``failed`` (ended with an exception:
    a dict from the exception type's name to a count, such as
    ``{"ValueError": 2, "WorkerLost": 1, "TaskTimeout": 1}``) or
    ``cancelled``. So ``submitted == queued + running + done +
    sum(failed.values()) + cancelled``, give or take a cancel racing with
    the call.

    ``retried`` counts runs again after a worker died (see ``retries``),
    ``restarts`` the workers started to replace others: recycled, crashed,
    killed or timed out. ``workers`` describes each worker process now; it
    is empty once the pool is shut down, and the counts stay.
    """

    __module__ = "pool"

    submitted: int
    queued: int
    running: int
    done: int
    # A dict, so not hashed; the rest still makes the stats hashable.
    failed: dict[str, int] = field(hash=False)
    cancelled: int
    retried: int
    restarts: int
    workers: tuple[WorkerStats, ...]


def with_usage(stats: PoolStats) -> PoolStats:
    """``stats`` with each worker's memory and CPU time read now (slow: /proc).

    A worker that exited since the census reads as None.
    """
    if not stats.workers:
        return stats
    workers = tuple(
        dataclasses.replace(w, rss=tree_rss(w.pid), cpu_seconds=_cpu_seconds(w.pid)) for w in stats.workers
    )
    return dataclasses.replace(stats, workers=workers)


def _cpu_seconds(pid: int) -> float | None:
    import psutil  # when first needed: it is most of the pool's import time

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)
