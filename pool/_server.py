"""The caller's end of the fork server (`pool._zygote`): one per process.

Starts the server (with `spawnv_passfds`, as multiprocessing starts its
own), sends it fork requests, and replaces it when it died or hangs. How a
request is made from a ``Process`` object, and how the worker it makes is
watched, is `pool._start`'s.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from multiprocessing import process, spawn, util

from . import _zygote
from ._errors import describe_exit
from ._frames import send_with_fds

__all__ = ["AVAILABLE", "TIMEOUT", "close_quietly", "open_stdio", "search_path", "server"]

# What the server imports before it serves (every worker needs it), and
# while it waits for its first requests (what most workers need soon).
_PRELOAD = ["pool._worker"]
_IDLE_PRELOAD = ["cloudpickle", "multiprocessing", "tblib", "logging"]  # logging imports traceback


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
            self._ensure_running()

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
        self._ensure_running()
        assert self._ctl is not None and self._pid is not None
        send_with_fds(self._ctl, _zygote.HEADER.pack(len(payload)) + payload, fds)
        return self._pid

    def _ensure_running(self) -> None:
        if not self._running():
            self._forget()
            self._start()

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
        ours.settimeout(TIMEOUT)  # a stopped server fills the socket: fail, do not hang
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
            *search_path(),
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
            close_quietly(list(self._alive))
            self._alive = None


# How long the caller waits for the server to take a request and fork; only
# a stopped or hung server takes that long, and is then killed and replaced.
TIMEOUT = 30.0


def open_stdio() -> list[int]:
    """The caller's stdout and stderr, for each worker to write where they go now."""
    return [fd for fd in (1, 2) if _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def search_path() -> list[str]:
    """``sys.path``, its empty entry (the current directory) made the directory the caller started in.

    As spawn does: ``''`` would otherwise follow each ``chdir`` of the caller.
    """
    return [process.ORIGINAL_DIR if entry == "" else entry for entry in sys.path]  # type: ignore[attr-defined]


def close_quietly(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


server = _Server()
AVAILABLE = sys.platform != "win32" and hasattr(os, "fork") and hasattr(socket, "send_fds")
if AVAILABLE:
    os.register_at_fork(
        before=server.before_fork,
        after_in_parent=server.after_fork_in_parent,
        after_in_child=server.after_fork_in_child,
    )
