"""The fork server: a small process of our own that forks every worker.

Why not multiprocessing's forkserver: a fresh pool's first result waits for
the server to boot, and multiprocessing's imports most of multiprocessing
before it serves, then starts a resource tracker (a second interpreter) that
a pool never uses. This server imports only what a worker needs (`serve`
preloads `pool._worker`, which stays clear of multiprocessing) and forks
from there; what a worker needs later (cloudpickle) it imports while idle.
Not even ``typing``, 2 ms of the server's start before its first fork: the
modules a worker imports name it for the type checker only (``TYPE_CHECKING
= False``, which mypy reads as true). Nor ``logging`` and ``multiprocessing``,
8 ms more: a worker sets up its log forwarding and its multiprocessing
identity when a task first imports them (`pool._import_hooks`), and the
server imports them while idle, for the workers it forks later.

This module is the server's side, and a forked worker's first steps; the
caller's side is in `pool._start`. Both sides speak over one Unix socket:

* the caller sends a request: an 8-byte length, then a pickle of (prep,
  target, args, kwargs), with descriptors attached: those the arguments
  name (a worker's Pipe end), the caller's stdout and stderr and, last, the
  write end of a status pipe;
* the server forks, writes the child's pid to the status pipe, and once
  the child ended its exit code (``Popen.returncode``'s meaning), then
  reaps it and closes the pipe. The caller watches the child itself (a
  pidfd) where it can, the status pipe elsewhere.

The server ends when its socket closes (the caller replaced it) or when the
caller's process ends: its "alive" pipe, whose write end only the caller
holds, reads end of file. A forked child keeps that pipe's read end as its
parent sentinel (`parent_sentinel`); the pipe outlives any one server, so a
server that dies does not take its workers along. SIGINT is ignored here:
Ctrl-C in a terminal reaches the whole process group, and is the caller's
to handle.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable

from ._frames import Channel, read_exact
from ._import_hooks import when_imported

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    from typing import Any

__all__ = ["HEADER", "RequestPickler", "parent_sentinel", "process_state", "read_status", "serve"]

HEADER = struct.Struct("!Q")
# A child's pid, then its exit code, on its status pipe (`read_status`).
STATUS = struct.Struct("q")
# Seconds without a request before the server loads what workers need later:
# a pool asks for all its workers at once, and an import (cloudpickle takes
# about 10 ms) would hold up the ones after it.
IDLE = 0.05
# Descriptors one request may pass: a worker's Pipe end, the caller's stdout
# and stderr, and the status pipe.
MAX_FDS = 8

# In a forked child: a descriptor readable (at end of file) once the process
# that asked for it is gone. None elsewhere.
parent_sentinel: int | None = None
# In a forked child: its name as multiprocessing's child (``current_process().name``),
# for its log records while multiprocessing is not imported. None elsewhere.
process_name: str | None = None


def serve(ctl_fd: int, alive_fd: int, preload: list[str], idle_preload: list[str]) -> None:
    """The server's life: import ``preload``, then fork on request until the caller is gone."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a mask is inherited; ours must not be
    _stdin_from_devnull()  # workers must not read the caller's input (a batch job may)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _on_sigchld)
    for name in preload:
        __import__(name)
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=ctl_fd)
    # poll, not select: the caller's descriptor numbers are kept, and may pass 1023.
    poller = select.poll()
    for fd in (ctl_fd, alive_fd, wake_r):
        poller.register(fd, select.POLLIN)
    children: dict[int, int] = {}  # pid: its status pipe's write end
    later = list(idle_preload)
    while True:
        ready = {fd for fd, _ in poller.poll(IDLE * 1000 if later else None)}
        if not ready:
            _import_quietly(later.pop(0))  # nothing to do: load what workers use later
            continue
        if alive_fd in ready:
            break
        if wake_r in ready:
            _drain(wake_r)
            _reap(children)
        if ctl_fd in ready:
            request = _receive(ctl)
            if request is None:
                break
            _fork(*request, children, (ctl_fd, wake_r, wake_w), alive_fd)
            del request  # an initializer's arguments may be big
    os._exit(0)


def _stdin_from_devnull() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


def _on_sigchld(signum: int, frame: object) -> None:
    """Nothing: the signal's byte on the wake-up pipe is what the loop waits on."""


def _import_quietly(name: str) -> None:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001  # a worker that needs it reports the failure itself
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _reap(children: dict[int, int]) -> None:
    """Report each ended child's exit code, then reap it.

    In that order: until it is reaped its pid cannot be reused, so a caller
    that finds no exit code yet knows the pid it holds is still its worker.
    """
    while True:
        try:
            ended = _peek_ended()
        except ChildProcessError:
            return
        if ended is None:
            return
        pid, code = ended
        fd = children.pop(pid, None)
        if fd is not None:
            _write_status(fd, code)
            os.close(fd)
        os.waitpid(pid, 0)


def _peek_ended() -> tuple[int, int] | None:
    """An ended child's pid and exit code, left unreaped (where waitid can); None if none."""
    if not hasattr(os, "waitid"):
        pid, status = os.waitpid(-1, os.WNOHANG)
        return None if pid == 0 else (pid, os.waitstatus_to_exitcode(status))
    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None or info.si_pid == 0:
        return None
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    return info.si_pid, code


def read_status(fd: int) -> int:
    """The next number on a status pipe (the caller's side); EOFError if the server is gone."""
    return int(STATUS.unpack(read_exact(fd, STATUS.size))[0])


def _write_status(fd: int, value: int) -> None:
    try:
        os.write(fd, STATUS.pack(value))
    except OSError:  # the caller closed its end: nobody is waiting for it
        pass


def _receive(ctl: socket.socket) -> tuple[bytes, list[int]] | None:
    """One request, or None once the caller closed its end."""
    header, fds, flags, _ = socket.recv_fds(ctl, HEADER.size, MAX_FDS, getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    if not header:
        _close_all(fds)
        return None
    try:
        if flags & socket.MSG_CTRUNC or not fds:
            raise OSError("a request came without its descriptors")
        header += read_exact(ctl.fileno(), HEADER.size - len(header))
        (length,) = HEADER.unpack(header)
        return bytes(read_exact(ctl.fileno(), length)), fds
    except BaseException:
        _close_all(fds)
        raise


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _fork(
    payload: bytes, fds: list[int], children: dict[int, int], own: tuple[int, ...], alive_fd: int
) -> None:
    status_fd = fds.pop()
    pid = os.fork()
    if pid == 0:
        # Its own status pipe too: else the caller never sees end of file
        # from it, should this server die before it writes the pid.
        _close_all([*own, *children.values(), status_fd])
        _child(payload, fds, alive_fd)  # never returns
    _close_all(fds)
    children[pid] = status_fd
    _write_status(status_fd, pid)


def _child(payload: bytes, fds: list[int], alive_fd: int) -> None:
    """A forked worker's life: take the request's settings, run its target, exit."""
    global parent_sentinel, process_name
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        parent_sentinel = alive_fd
        prep, target, args, kwargs = _RequestUnpickler(payload, fds).load()
        _take_stdio(prep["stdio"], fds[len(fds) - len(prep["stdio"]) :])
        sys.path[:] = prep["sys_path"]
        sys.argv[:] = prep["sys_argv"]
        if os.environ != prep["environ"]:  # the caller's now, not as it was when the server started
            os.environ.clear()
            os.environ.update(prep["environ"])
        os.chdir(prep["cwd"])
        process_name = prep["process"]["_name"]
        # When multiprocessing is imported, if ever: most tasks never do.
        when_imported("multiprocessing", lambda _: _become(prep["process"], prep["start_method"], alive_fd))
        target(*args, **kwargs)
        code = 0
        _as_multiprocessing_exits()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # noqa: BLE001  # reported on stderr, as a process's uncaught error
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # noqa: BLE001  # exiting anyway
                pass
        os._exit(code)


def _take_stdio(targets: list[int], fds: list[int]) -> None:
    """Write where the caller's stdout and stderr go now (it may have redirected them since)."""
    for target, fd in zip(targets, fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)


def _become(state: dict[str, Any], start_method: str, sentinel: int) -> None:
    """Make multiprocessing see this process as the caller's child, as its own start does.

    Code in a task asks ``multiprocessing.parent_process()`` or
    ``current_process().name`` whether it runs in a worker, and a manager's
    proxy passed to a task authenticates with ``current_process().authkey``.
    """
    import itertools
    from multiprocessing import context, process

    authkey = process.AuthenticationString(state["_config"]["authkey"])  # type: ignore[attr-defined]
    config = dict(state["_config"], authkey=authkey)
    me = process.BaseProcess.__new__(process.BaseProcess)
    me.__dict__.update(state, _config=config, _popen=None, _closed=False, _target=None, _args=(), _kwargs={})
    process._current_process = me  # type: ignore[attr-defined]
    parent = process._ParentProcess(state["_parent_name"], state["_parent_pid"], sentinel)  # type: ignore[attr-defined]
    process._parent_process = parent  # type: ignore[attr-defined]
    process._children = set()  # type: ignore[attr-defined]
    process._process_counter = itertools.count(1)  # type: ignore[attr-defined]
    context._force_start_method(start_method)


def process_state(process_obj: Any) -> dict[str, Any]:
    """What `_become` needs of the caller's ``Process`` object (the authkey as bytes: it refuses pickle)."""
    config = dict(process_obj._config)
    config["authkey"] = bytes(config["authkey"])
    return {
        "_identity": process_obj._identity,
        "_config": config,
        "_parent_pid": process_obj._parent_pid,
        "_parent_name": process_obj._parent_name,
        "_name": process_obj._name,
    }


def _as_multiprocessing_exits() -> None:
    """Wait for the task's non-daemon threads and run multiprocessing's finalizers, as its children do."""
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._exit_function()


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


class _RequestUnpickler(pickle.Unpickler):
    """Rebuilds a request; what the caller pickled as a Pipe end is a `Channel` here."""

    def __init__(self, payload: bytes, fds: list[int]) -> None:
        super().__init__(io.BytesIO(payload))
        self._fds = fds

    def persistent_load(self, pid: object) -> object:
        assert isinstance(pid, int)
        return Channel(self._fds[pid])


class RequestPickler(pickle.Pickler):
    """The caller's pickler for a request: each Pipe end becomes a passed descriptor."""

    def __init__(self, file: io.BytesIO, fds: list[int], is_pipe: Callable[[object], bool]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._fds = fds
        self._is_pipe = is_pipe

    def persistent_id(self, obj: object) -> int | None:
        if self._is_pipe(obj):
            self._fds.append(obj.fileno())  # type: ignore[attr-defined]
            return len(self._fds) - 1
        return None
