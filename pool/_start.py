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
multiprocessing's forkserver ``Popen`` (whose status protocol `pool._zygote`
speaks) with its own way to launch.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.process
import os
import signal
import socket
import sys
import threading
from multiprocessing import forkserver, popen_forkserver, process, spawn, util
from typing import Any

from . import _zygote
from ._errors import describe_exit

__all__ = ["default_context", "prestart", "resolve_context", "server_pid"]

# What the server imports before it serves (every worker needs it), and
# while it waits for its first requests (what most workers need soon).
_PRELOAD = ["pool._worker", "multiprocessing"]
_IDLE_PRELOAD = ["cloudpickle", "pool._serialize", "tblib"]


def default_context() -> multiprocessing.context.BaseContext:
    """A start method that is safe in a process with threads.

    The supervisor is a thread, so ``fork`` (copying a process mid-way through
    other threads' critical sections) is never the default. Our fork server
    where processes can pass descriptors; ``spawn`` elsewhere.
    """
    if _SERVER_AVAILABLE:
        return _ServerContext()
    return multiprocessing.get_context("spawn")


def prestart(context: multiprocessing.context.BaseContext) -> None:
    """Have the fork server boot now, if ``context`` uses it, without waiting for it."""
    if isinstance(context, _ServerContext):
        try:
            _server.prestart()
        except OSError:
            pass  # the first worker's start tries again, and reports it


def server_pid() -> int | None:
    """The fork server's pid while it runs (it lives as long as this process)."""
    return _server.pid()


class _Server:
    """The caller's end of `pool._zygote`: starts it, asks it to fork, restarts it.

    One per process, shared by every pool, as multiprocessing's forkserver is.
    Requests from several supervisors go one at a time, under a lock, which a
    fork of this process also takes: a forked copy never holds half of a
    request, nor a status pipe or socket it would not close.

    The alive pipe is made once and outlives any one server: workers watch
    its read end to learn that this process is gone, and a server that dies
    and is replaced must not take its workers with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._ctl: socket.socket | None = None
        self._alive: tuple[int, int] | None = None

    def pid(self) -> int | None:
        with self._lock:
            return self._pid if self._running() else None

    def prestart(self) -> None:
        with self._lock:
            if not self._running():
                self._forget()
                self._start()

    def fork(self, payload: bytes, fds: list[int]) -> tuple[int, int]:
        """Ask for one fork; return the read end of its status pipe, and the server's pid.

        The child's pid, then its exit code, come on the status pipe.
        """
        with self._lock:
            status_r, status_w = os.pipe()
            try:
                sent = [*fds, status_w]
                try:
                    return status_r, self._send(payload, sent)
                except OSError:  # the server died since the last request: once more, with a new one
                    self._forget()
                    return status_r, self._send(payload, sent)
            except BaseException:
                os.close(status_r)
                raise
            finally:
                os.close(status_w)

    def forget(self, pid: int, *, kill: bool = False) -> str:
        """Let go of the server ``pid`` (dead, or hung and then killed), unless already replaced.

        Returns how it ended, as " with exit code 1" (empty if unknown).
        """
        with self._lock:
            if self._pid != pid:
                return ""
            if kill:
                os.kill(pid, signal.SIGKILL)
            self._pid = None
            self._forget()
            try:
                reaped, status = os.waitpid(pid, 0 if kill else os.WNOHANG)
            except ChildProcessError:
                return ""
            return f" with {describe_exit(os.waitstatus_to_exitcode(status))}" if reaped else ""

    def _send(self, payload: bytes, fds: list[int]) -> int:
        if not self._running():
            self._forget()
            self._start()
        assert self._ctl is not None and self._pid is not None
        message = _zygote.HEADER.pack(len(payload)) + payload
        sent = socket.send_fds(self._ctl, [message], fds)
        if sent < len(message):
            self._ctl.sendall(memoryview(message)[sent:])
        return self._pid

    def _running(self) -> bool:
        """Whether the server runs; reaps it if it ended."""
        if self._pid is None:
            return False
        try:
            return os.waitpid(self._pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def _start(self) -> None:
        executable = os.fsencode(spawn.get_executable())
        if not os.access(executable, os.X_OK):
            raise OSError(
                f"cannot start the fork server: {os.fsdecode(executable)!r} is not an executable file"
            )
        if self._alive is None:
            self._alive = os.pipe()
        alive_r = self._alive[0]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.settimeout(SERVER_TIMEOUT)  # a stopped server fills the socket: fail, do not hang
        code = (
            "import sys; sys.path[:] = sys.argv[5:]; from pool._zygote import serve; "
            "serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split())"
        )
        args = [
            executable,
            *util._args_from_interpreter_flags(),  # type: ignore[attr-defined]
            "-c",
            code,
            str(theirs.fileno()),
            str(alive_r),
            " ".join(_PRELOAD),
            " ".join(_IDLE_PRELOAD),
            *_search_path(),
        ]
        try:
            # As multiprocessing starts its forkserver: a child of ours, never waited
            # on while it runs, so no Popen object to warn at exit that it still does.
            self._pid = util.spawnv_passfds(executable, args, (theirs.fileno(), alive_r))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._ctl = ours

    def _forget(self) -> None:
        """Let go of a server: it exits once its socket closes."""
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._pid is not None:
            self._running()  # reaps it if it is gone
            self._pid = None

    def before_fork(self) -> None:
        self._lock.acquire()

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        # A forked copy of this process must not keep the server alive, nor
        # write into its socket: it starts its own when it needs one.
        self._lock = threading.Lock()
        self._pid = None
        if self._ctl is not None:
            os.close(self._ctl.detach())
            self._ctl = None
        if self._alive is not None:
            _close_open(list(self._alive))
            self._alive = None


# How long the caller waits for the server to take a request and fork; only
# a stopped or hung server takes that long, and is then killed and replaced.
SERVER_TIMEOUT = 30.0


def _open_stdio() -> list[int]:
    """The caller's stdout and stderr, for each worker to write where they go now."""
    return [fd for fd in (1, 2) if _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _search_path() -> list[str]:
    """``sys.path``, its empty entry (the current directory) made the directory the caller started in.

    As spawn does: ``''`` would otherwise follow each ``chdir`` of the caller.
    """
    return [process.ORIGINAL_DIR if entry == "" else entry for entry in sys.path]  # type: ignore[attr-defined]


_server = _Server()
_SERVER_AVAILABLE = sys.platform != "win32" and hasattr(os, "fork") and hasattr(socket, "send_fds")
if _SERVER_AVAILABLE:
    os.register_at_fork(
        before=_server.before_fork,
        after_in_parent=_server.after_fork_in_parent,
        after_in_child=_server.after_fork_in_child,
    )


class _ServerPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver ``Popen``, launched through `pool._zygote`."""

    def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
        fds: list[int] = []
        buffer = io.BytesIO()
        stdio = _open_stdio()
        prep = {
            "cwd": os.getcwd(),
            "sys_path": _search_path(),
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
        status_r, server = _server.fork(buffer.getvalue(), [*fds, *stdio])
        self._status = status_r
        self.sentinel = status_r
        self.finalizer = util.Finalize(self, _close_open, ([status_r],))
        try:
            if not multiprocessing.connection.wait([status_r], SERVER_TIMEOUT):
                _server.forget(server, kill=True)
                raise OSError(
                    f"the fork server (pid {server}) did not start a worker in {SERVER_TIMEOUT:g} s"
                )
            self.pid = forkserver.read_signed(status_r)
        except EOFError:  # the server died before it forked; the next start makes a new one
            how = _server.forget(server)
            raise OSError(f"the fork server (pid {server}) ended{how} before it started a worker") from None
        except BaseException:
            self.finalizer()
            raise
        pidfd = _pidfd_of(self.pid)
        if pidfd is not None:
            if multiprocessing.connection.wait([status_r], 0):
                # Its exit code is in: it may be reaped already, and its pid
                # someone else's. The status pipe says all there is to know.
                os.close(pidfd)
                return
            # The sentinel is the process itself: a server that dies leaves
            # its workers running, and must not make them look dead.
            self.sentinel = pidfd
            self.finalizer.cancel()
            self.finalizer = util.Finalize(self, _close_open, ([status_r, pidfd],))

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            timeout = 0 if flag == os.WNOHANG else None
            if not multiprocessing.connection.wait([self.sentinel], timeout):
                return None
            self.returncode = self._exit_code()
        return self.returncode

    def _exit_code(self) -> int:
        """The exit code the server read for it: 255 if the server is gone (as multiprocessing says)."""
        if self.sentinel != self._status and not multiprocessing.connection.wait([self._status], STATUS_WAIT):
            return 255
        try:
            return int(forkserver.read_signed(self._status))
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


def _close_open(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _is_pipe(obj: object) -> bool:
    return isinstance(obj, multiprocessing.connection.Connection)


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
