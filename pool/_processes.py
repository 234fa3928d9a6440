"""Starting and ending worker processes: start methods, process trees."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import signal
import sys
from collections.abc import Iterator

import psutil

__all__ = [
    "block_async_signals",
    "children_of",
    "default_context",
    "kill_all",
    "kill_tree",
    "resolve_context",
    "signals_unblocked",
]


def default_context() -> multiprocessing.context.BaseContext:
    """A start method that is safe in a process with threads.

    The supervisor is a thread, so ``fork`` (copying a process mid-way through
    other threads' critical sections) is never the default. ``forkserver``
    forks from a clean single-threaded server and starts fast; ``spawn``
    elsewhere.
    """
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        _preload_worker(context)
        return context
    return multiprocessing.get_context("spawn")


def _preload_worker(context: multiprocessing.context.BaseContext) -> None:
    """Have the forkserver import the worker's modules once, for every fork.

    Without it each worker imports them itself after the fork. Only while the
    server is not running yet (the list is read when it starts), and added
    to the modules already asked for (``__main__`` by default).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    if "pool._worker" not in modules:
        context.set_forkserver_preload([*modules, "pool._worker"])


def resolve_context(
    mp_context: multiprocessing.context.BaseContext | str | None,
) -> multiprocessing.context.BaseContext:
    if mp_context is None:
        return default_context()
    if isinstance(mp_context, str):
        try:
            return multiprocessing.get_context(mp_context)
        except ValueError:
            methods = ", ".join(multiprocessing.get_all_start_methods())
            raise ValueError(
                f"unknown start method {mp_context!r}; this platform has: {methods}"
            ) from None
    if not hasattr(mp_context, "Process"):
        raise TypeError(
            f"mp_context must be a multiprocessing context or a start method name, "
            f"not {type(mp_context).__qualname__}"
        )
    return mp_context


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started.

    The children are listed before the parent dies: once it is gone they are
    re-parented and can no longer be found from it.
    """
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
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each process still running; psutil checks the pid was not reused."""
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
