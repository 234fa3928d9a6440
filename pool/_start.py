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
import socket
import sys
import threading
from multiprocessing import forkserver, popen_forkserver, spawn, util
from typing import Any

from . import _zygote

__all__ = ["default_context", "resolve_context", "server_pid"]

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


def server_pid() -> int | None:
    """The fork server's pid while it runs (it lives as long as this process)."""
    return _server.pid()


class _Server:
    """The caller's end of `pool._zygote`: starts it, asks it to fork, restarts it.

    One per process, shared by every pool, as multiprocessing's forkserver is.
    Requests from several supervisors go one at a time, under a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._ctl: socket.socket | None = None
        self._alive_w: int | None = None

    def pid(self) -> int | None:
        with self._lock:
            return self._pid if self._running() else None

    def fork(self, payload: bytes, fds: list[int]) -> int:
        """Ask for one fork; return the server's pid.

        The child's pid and exit code come on the status pipe in ``fds``.
        """
        with self._lock:
            try:
                return self._send(payload, fds)
            except OSError:  # the server died since the last request: once more, with a new one
                self._forget()
                return self._send(payload, fds)

    def forget(self, pid: int) -> None:
        """Let go of the server ``pid`` (it died), unless a new one already replaced it."""
        with self._lock:
            if self._pid == pid:
                self._forget()

    def _send(self, payload: bytes, fds: list[int]) -> int:
        if not self._running():
            self._forget()
            self._start()
        assert self._ctl is not None
        message = _zygote.HEADER.pack(len(payload)) + payload
        sent = socket.send_fds(self._ctl, [message], fds)
        if sent < len(message):
            self._ctl.sendall(memoryview(message)[sent:])
        assert self._pid is not None
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
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        alive_r, alive_w = os.pipe()
        code = (
            "import sys; sys.path[:] = sys.argv[5:]; from pool._zygote import serve; "
            "serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split())"
        )
        args = [
            spawn.get_executable(),
            *util._args_from_interpreter_flags(),  # type: ignore[attr-defined]
            "-c",
            code,
            str(theirs.fileno()),
            str(alive_r),
            " ".join(_PRELOAD),
            " ".join(_IDLE_PRELOAD),
            *sys.path,
        ]
        try:
            # As multiprocessing starts its forkserver: a child of ours, never waited
            # on while it runs, so no Popen object to warn at exit that it still does.
            self._pid = util.spawnv_passfds(args[0], args, (theirs.fileno(), alive_r))
        except BaseException:
            ours.close()
            os.close(alive_w)
            raise
        finally:
            theirs.close()
            os.close(alive_r)
        self._ctl = ours
        self._alive_w = alive_w

    def _forget(self) -> None:
        """Let go of a server: it exits once its alive pipe and socket close."""
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._alive_w is not None:
            os.close(self._alive_w)
            self._alive_w = None
        if self._pid is not None:
            self._running()  # reaps it if it is gone
            self._pid = None

    def after_fork_in_child(self) -> None:
        # A forked copy of this process must not keep the server alive, nor
        # write into its socket: it starts its own when it needs one.
        self._lock = threading.Lock()
        self._pid = None
        for fd in (self._alive_w, None if self._ctl is None else self._ctl.detach()):
            if fd is not None:
                os.close(fd)
        self._ctl = None
        self._alive_w = None


_server = _Server()
_SERVER_AVAILABLE = sys.platform != "win32" and hasattr(os, "fork") and hasattr(socket, "send_fds")
if _SERVER_AVAILABLE:
    os.register_at_fork(after_in_child=_server.after_fork_in_child)


class _ServerPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver ``Popen``, launched through `pool._zygote`."""

    def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
        fds: list[int] = []
        buffer = io.BytesIO()
        prep = {
            "cwd": os.getcwd(),
            "sys_path": list(sys.path),
            "sys_argv": list(sys.argv),
            "environ": dict(os.environ),
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
        payload = buffer.getvalue()
        status_r, server = self._ask(payload, fds)
        self._status = status_r
        self.sentinel = status_r
        self.finalizer = util.Finalize(self, _close_open, ([status_r],))
        try:
            self.pid = forkserver.read_signed(status_r)
        except EOFError:  # that server died before it forked: a new one, once
            _server.forget(server)
            self.finalizer()
            status_r, _ = self._ask(payload, fds)
            self._status = status_r
            self.sentinel = status_r
            self.finalizer = util.Finalize(self, _close_open, ([status_r],))
            self.pid = forkserver.read_signed(status_r)
        pidfd = _pidfd_of(self.pid)
        if pidfd is not None:
            # The sentinel is the process itself: a server that dies leaves
            # its workers running, and must not make them look dead.
            self.sentinel = pidfd
            self.finalizer.cancel()
            self.finalizer = util.Finalize(self, _close_open, ([status_r, pidfd],))

    @staticmethod
    def _ask(payload: bytes, fds: list[int]) -> tuple[int, int]:
        """Send the request with a fresh status pipe; its read end, and the server's pid."""
        status_r, status_w = os.pipe()
        try:
            return status_r, _server.fork(payload, [*fds, status_w])
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)

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
