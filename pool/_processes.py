"""Ending worker processes and their trees; signal masks around starting them.

psutil, which finds a process's descendants, is most of the time ``from pool
import Pool`` would take: it is imported by `load_psutil`, which the
supervisor calls once it has asked for its first workers (it then waits
for them anyway), and nowhere on the caller's way to its first result.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

__all__ = [
    "block_async_signals",
    "children_of",
    "kill_all",
    "kill_tree",
    "load_psutil",
    "signals_unblocked",
]


def load_psutil() -> None:
    """Import psutil now, before any process must be killed (when memory or descriptors may be short)."""
    import psutil  # noqa: F401


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started.

    The children are listed before the parent dies: once it is gone they are
    re-parented and can no longer be found from it.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return
    for process in (root, *children):
        try:
            process.kill()
        except psutil.Error:
            pass


def children_of(pid: int) -> list[psutil.Process]:
    """Every descendant of ``pid`` now (empty if it is gone)."""
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each process still running; psutil checks the pid was not reused."""
    import psutil

    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


# Signals delivered to a process go to any thread that does not block them.
# Python only runs handlers in the main thread, and a main thread blocked in
# `Future.result()` is woken only by a signal delivered to it: if SIGINT
# landed on the supervisor thread, Ctrl-C would not interrupt the caller's
# wait. So the supervisor blocks them, and unblocks them while it starts a
# worker (a child inherits its starter's mask).
_FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGKILL, signal.SIGSTOP}


def block_async_signals() -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _FAULTS)


@contextlib.contextmanager
def signals_unblocked() -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
