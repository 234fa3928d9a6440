"""What the supervisor knows of each task and each worker process.

A `Task` is one call (or one chunk of a map), already pickled in the
caller's thread. A `WorkerHandle` is the supervisor's view of one worker: its
process and Pipe, the tasks sent to it and not answered yet (oldest first;
the oldest is the one running, see `pool._protocol`), what it has cached,
and what `Pool.stats` shows of it (`WorkerHandle.state`, ``tasks_done``).
"""

from __future__ import annotations

import itertools
import multiprocessing.process
import os
import socket
from collections import deque
from typing import Any

from . import _protocol as proto
from ._frames import FrameReader
from ._futures import Future
from ._segments import Segment, socket_of

# A worker holds tasks queued behind the one it runs, in its pipe, so it
# never waits for the supervisor between short tasks, and the supervisor
# sends and reads many at a time. A queued task cannot move to an idle
# worker or be cancelled, so the supervisor queues only behind short tasks:
# of a function whose calls it has seen take under PREFETCH_BELOW seconds
# (`Paces`), on a worker whose recent tasks did too; one such task, or as
# many as take PREFETCH_WORK seconds together by the worker's recent pace,
# up to MAX_OUTSTANDING in all. So a long task that turns up behind short
# ones waits for at most a few milliseconds of them. Nor does it queue
# behind a task that has run PREFETCH_BELOW seconds already: a call that
# runs long this time, or is stuck, would hold what waits behind it while
# other workers are free. Measured on 20,000 tiny tasks (2 workers): at most
# 2 held, 21k tasks/s; at most 32, 30-40k.
MAX_OUTSTANDING = 64
PREFETCH_BELOW = 0.005
PREFETCH_WORK = 0.002

# Task bytes that may sit unread in a busy worker's pipe. A busy worker may be
# blocked writing a large result to us; if we also blocked writing to it, both
# would wait forever. Below the socket buffer size, a send never blocks. An
# idle worker is always reading, so a task of any size may go to it.
PIPE_BUDGET = 32 * 1024


class Task:
    """One unit of work, pickled in the caller's thread.

    A plain class, not a dataclass: ``dataclasses`` (with ``inspect``) would
    be a tenth of the pool's import time, for this one class.
    """

    __slots__ = (
        "args_bytes",
        "attempts",
        "fn_bytes",
        "fn_id",
        "future",
        "id",
        "kind",
        "name",
        "retries",
        "segment",
        "started",
        "timeout",
    )

    def __init__(
        self,
        id: int,
        future: Future[Any],
        name: str,
        kind: int,
        fn_id: int | None,
        fn_bytes: bytes,
        args_bytes: bytes,
        timeout: float | None,
        retries: int,
        segment: Segment | None = None,
        attempts: int = 0,
    ) -> None:
        self.id = id
        self.future = future
        self.name = name
        self.kind = kind
        self.fn_id = fn_id
        self.fn_bytes = fn_bytes
        self.args_bytes = args_bytes
        self.timeout = timeout
        self.retries = retries
        # The arguments' big buffers (`pool._segments`), kept until the task
        # ends: a retry sends them again.
        self.segment = segment
        self.attempts = attempts
        # When the worker began it, by our clock: see _protocol on why the
        # oldest outstanding task is the running one.
        self.started: float | None = None

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name} attempts={self.attempts}>"


class WorkerHandle:
    __slots__ = (
        "cached",
        "children",
        "conn",
        "doomed",
        "init_error",
        "memory_checked",
        "oom_kills",
        "outstanding",
        "pid",
        "process",
        "reader",
        "ready",
        "rss",
        "sent",
        "sock",
        "speed",
        "stopping",
        "tasks_done",
        "unreachable",
    )

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Any) -> None:
        self.process = process
        self.conn = conn
        # conn's socket: events are read through it, many at a time, and
        # descriptors pass over it (made now: a process out of descriptors
        # later must not cut a worker off).
        self.sock: socket.socket = socket_of(conn)
        self.reader = FrameReader(self.sock)
        self.pid: int | None = process.pid
        self.ready = False
        self.stopping = False
        self.unreachable = False  # a send to it failed: it is dead or dying
        self.doomed = False  # killed by us: its outstanding tasks are not to blame
        self.outstanding: deque[Task] = deque()
        self.cached = proto.LruKeys()
        self.sent = 0
        self.tasks_done = 0  # tasks it answered, with a result or an exception
        self.speed: float | None = None  # smoothed task duration, seconds
        self.init_error: BaseException | None = None
        self.rss: int | None = None  # bytes, last measured (with max_memory_per_child)
        self.memory_checked = float("-inf")
        self.oom_kills: int | None = None  # the cgroup's OOM kill count at its start
        self.children: list[Any] = []  # psutil.Process objects noted before a SIGTERM

    def usable(self) -> bool:
        return self.ready and not (self.stopping or self.doomed or self.unreachable)

    def state(self) -> str:
        """As `Pool.stats` names it: starting, idle, busy or stopping."""
        if self.stopping or self.doomed or self.unreachable:
            return "stopping"
        if not self.ready:
            return "starting"
        return "busy" if self.outstanding else "idle"

    def running(self) -> str | None:
        """The name of the task it runs now, if any."""
        if self.doomed or not self.outstanding:
            return None  # doomed: we killed it mid-task; what is left never started
        return self.outstanding[0].name

    def accepts(self, task: Task, batch: Batch, now: float, paces: Paces) -> bool:
        """May ``task`` join ``batch``, the tasks about to be sent to this worker?"""
        queued = len(self.outstanding) + len(batch.tasks)
        if queued == 0:
            return True
        if queued >= MAX_OUTSTANDING or self.speed is None or self.speed >= PREFETCH_BELOW:
            return False
        if queued >= 2 and queued * self.speed > PREFETCH_WORK:
            return False
        if not self._short_ahead(batch.tasks, now, paces):
            return False
        if not self.outstanding:
            return True  # idle: it reads the whole batch in one message before it runs any
        return batch.unread + task_size(task) <= PIPE_BUDGET

    def _short_ahead(self, batch: list[Task], now: float, paces: Paces) -> bool:
        """Whether what a task would wait for here is short: see PREFETCH_BELOW."""
        # The task right ahead of it; those further ahead passed this when queued.
        ahead = batch[-1] if batch else self.outstanding[-1]
        if not paces.under(ahead.name, PREFETCH_BELOW):
            return False
        started = self.outstanding[0].started if self.outstanding else None
        return started is None or now - started < PREFETCH_BELOW  # else it runs long this time


class Batch:
    """The tasks about to be sent to one worker in one message, and what its pipe would hold unread.

    Kept as tasks join, so that a dispatch of n tasks costs n checks, not a
    sum over everything queued for each of them.
    """

    __slots__ = ("tasks", "unread")

    def __init__(self, worker: WorkerHandle) -> None:
        self.tasks: list[Task] = []
        # A busy worker's tasks but the running one may still sit unread in its pipe.
        self.unread = sum(task_size(t) for t in itertools.islice(worker.outstanding, 1, None))

    def append(self, task: Task) -> None:
        self.tasks.append(task)
        self.unread += task_size(task)


class Paces:
    """How long each function's calls take, smoothed, as the supervisor sees them end."""

    LIMIT = 1024  # names kept; past it, all are forgotten and measured anew

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def note(self, name: str, seconds: float) -> None:
        known = self._seconds.get(name)
        if known is None and len(self._seconds) >= self.LIMIT:
            self._seconds.clear()
        self._seconds[name] = smoothed(known, seconds)

    def under(self, name: str, limit: float) -> bool:
        """Whether calls of ``name`` were seen, and take under ``limit`` seconds."""
        seconds = self._seconds.get(name)
        return seconds is not None and seconds < limit


def smoothed(known: float | None, seconds: float) -> float:
    """A duration's running estimate after one more measurement: recent ones weigh most."""
    return seconds if known is None else 0.8 * known + 0.2 * seconds


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def task_size(task: Task) -> int:
    """The bytes a task puts in a pipe, at most."""
    return len(task.args_bytes) + len(task.fn_bytes)
