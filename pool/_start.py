"""How workers start: the default start method, our own fork server.

The default forks every worker from `pool._zygote`, a server process of our
own started with the first pool (and again if it dies). It is single-threaded,
so forking it is safe whatever threads the caller runs, and it imports only
the worker's side, so a fresh pool's first result does not wait for all of
multiprocessing to load twice. Workers never run the caller's main module
again: every function, class and argument from ``__main__`` travels by value
(cloudpickle), so a script needs no ``if __name__ == "__main__"`` guard.

To the supervisor a worker is still a multiprocessing ``Process``, with a
sentinel, an exit code, ``join`` and ``kill``: `_ServerPopen` is
multiprocessing's fork ``Popen`` with its own way to launch, through
`pool._server`, and its own way to learn the exit code (`pool._zygote`
reports it).
"""

from __future__ import annotations

import io
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import select
import sys
from multiprocessing import popen_fork, util
from typing import Any

from . import _server, _zygote

__all__ = ["default_context", "prestart", "resolve_context", "server_pid"]


def default_context() -> multiprocessing.context.BaseContext:
    """A start method that is safe in a process with threads.

    The supervisor is a thread, so ``fork`` (copying a process mid-way through
    other threads' critical sections) is never the default. Our fork server
    where processes can pass descriptors; ``spawn`` elsewhere.
    """
    if _server.AVAILABLE:
        return _ServerContext()
    return multiprocessing.get_context("spawn")


def prestart(context: multiprocessing.context.BaseContext) -> None:
    """Have the fork server boot now, if ``context`` uses it, without waiting for it."""
    if isinstance(context, _ServerContext):
        try:
            _server.server.prestart()
        except OSError:
            pass  # the first worker's start tries again, and reports it


def server_pid() -> int | None:
    """The fork server's pid while it runs (it lives as long as this process)."""
    return _server.server.pid()


class _ServerPopen(popen_fork.Popen):
    """multiprocessing's fork ``Popen``, launched through `pool._zygote`."""

    def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
        fds: list[int] = []
        buffer = io.BytesIO()
        stdio = _server.open_stdio()
        prep = {
            "cwd": os.getcwd(),
            "sys_path": _server.search_path(),
            "sys_argv": list(sys.argv),
            "environ": dict(os.environ),
            "stdio": stdio,
            "process": _zygote.process_state(process_obj),
            "start_method": process_obj._start_method,  # type: ignore[attr-defined]
        }
        request = (
            prep,
            process_obj._target,  # type: ignore[attr-defined]
            tuple(process_obj._args),  # type: ignore[attr-defined]
            dict(process_obj._kwargs),  # type: ignore[attr-defined]
        )
        _zygote.RequestPickler(buffer, fds, _is_pipe).dump(request)
        status_r, server = _server.server.fork(buffer.getvalue(), [*fds, *stdio])
        self._status = status_r
        self.sentinel = status_r
        self.finalizer = util.Finalize(self, _server.close_quietly, ([status_r],))
        try:
            if not _readable(status_r, _server.TIMEOUT):
                _server.server.forget(server, kill=True)
                raise OSError(
                    f"the fork server (pid {server}) did not start a worker in {_server.TIMEOUT:g} s"
                )
            try:
                self.pid = _zygote.read_status(status_r)
            except EOFError:  # the server died before it forked; the next start makes a new one
                how = _server.server.forget(server)
                raise OSError(
                    f"the fork server (pid {server}) ended{how} before it started a worker"
                ) from None
        except BaseException:
            self.finalizer()  # its status pipe, on every way out
            raise
        pidfd = _pidfd_of(self.pid)
        if pidfd is not None:
            if _readable(status_r, 0):
                # Its exit code is in: it may be reaped already, and its pid
                # someone else's. The status pipe says all there is to know.
                os.close(pidfd)
                return
            # The sentinel is the process itself: a server that dies leaves
            # its workers running, and must not make them look dead.
            self.sentinel = pidfd
            self.finalizer.cancel()
            self.finalizer = util.Finalize(self, _server.close_quietly, ([status_r, pidfd],))

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            timeout = 0 if flag == os.WNOHANG else None
            if not _readable(self.sentinel, timeout):
                return None
            self.returncode = self._exit_code()
        return self.returncode

    def _exit_code(self) -> int:
        """The exit code the server read for it: 255 if the server is gone (as multiprocessing says)."""
        if self.sentinel != self._status and not _readable(self._status, STATUS_WAIT):
            return 255
        try:
            return _zygote.read_status(self._status)
        except (OSError, EOFError):
            return 255


# How long the supervisor waits for the server to report the exit code of a
# worker known to have exited; only a stopped or hung server makes it wait.
STATUS_WAIT = 5.0


def _pidfd_of(pid: int) -> int | None:
    """A descriptor readable once ``pid`` exits (Linux), or None."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # exited and reaped already, or an old kernel: the status pipe says when
        return None


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable (or at its end) within ``timeout`` seconds (None: however long it takes)."""
    poller = select.poll()  # not select: the descriptor's number may pass 1023
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))


def _is_pipe(obj: object) -> bool:
    # Imported by the pool before its first worker starts (see Supervisor._load_modules).
    connection = sys.modules.get("multiprocessing.connection")
    return connection is not None and isinstance(obj, connection.Connection)


class _ServerProcess(multiprocessing.process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: multiprocessing.process.BaseProcess) -> Any:  # multiprocessing's name
        return _ServerPopen(process_obj)


class _ServerContext(multiprocessing.context.BaseContext):
    """Workers forked by `pool._zygote`."""

    _name = "forkserver"
    Process = _ServerProcess


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
            raise ValueError(f"unknown start method {mp_context!r}; this platform has: {methods}") from None
    if not hasattr(mp_context, "Process"):
        raise TypeError(
            f"mp_context must be a multiprocessing context or a start method name, "
            f"not {type(mp_context).__qualname__}"
        )
    return mp_context
