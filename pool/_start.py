"""How workers start: the default start method, and a forkserver that skips ``__main__``.

Apart from `pool._processes` (psutil, process trees): the process object a
worker is started with names its class, so each worker imports this module,
and it must stay light.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import sys
from typing import Any

__all__ = ["default_context", "resolve_context"]


def default_context() -> multiprocessing.context.BaseContext:
    """A start method that is safe in a process with threads.

    The supervisor is a thread, so ``fork`` (copying a process mid-way through
    other threads' critical sections) is never the default. ``forkserver``
    forks from a clean single-threaded server and starts fast; ``spawn``
    elsewhere. Our forkserver workers do not run the caller's main module
    again (see `_WorkerForkServerContext`).
    """
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        context = _WorkerForkServerContext()
        _preload_worker(context)
        return context
    return multiprocessing.get_context("spawn")


def _preload_worker(context: multiprocessing.context.BaseContext) -> None:
    """Have the forkserver import the worker's modules once, for every fork.

    Without it each worker imports them itself after the fork. Only while the
    server is not running yet (the list is read when it starts), and added
    to the modules already asked for (``__main__`` by default, which the
    server skips: it is never told where the main module is).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    wanted = [name for name in ("pool._worker", "pool._start") if name not in modules]
    if wanted:
        context.set_forkserver_preload([*modules, *wanted])


def _without_main(data: dict[str, object]) -> dict[str, object]:
    data.pop("init_main_from_path", None)
    data.pop("init_main_from_name", None)
    return data


@functools.cache
def _popen_without_main() -> type:
    """multiprocessing's forkserver Popen, minus running ``__main__`` again.

    Its ``_launch`` (the same from Python 3.10 to 3.13) sends the child the
    parent's "preparation data", and the child runs the caller's main module
    (as ``__mp_main__``) before anything else, as under spawn. A pool's
    worker never needs that: every function, class and argument from
    ``__main__`` travels by value (cloudpickle). Skipping it makes a fresh
    worker start in a few milliseconds whatever the script imports, and a
    script without an ``if __name__ == "__main__"`` guard does not run its
    top level again in every worker. The body below is ``_launch`` with the
    data filtered.
    """
    import io
    from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
    from multiprocessing.context import set_spawning_popen

    class Popen(popen_forkserver.Popen):
        def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
            prep_data = _without_main(spawn.get_preparation_data(process_obj._name))  # type: ignore[attr-defined]
            buf = io.BytesIO()
            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                set_spawning_popen(None)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
            # A duplicate of the data pipe's write end: the child's sentinel of its parent.
            parent_w = os.dup(w)
            self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))  # type: ignore[attr-defined]
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    return Popen


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: multiprocessing.process.BaseProcess) -> Any:  # multiprocessing's name
        if _LAUNCH_KNOWN:
            return _popen_without_main()(process_obj)
        return multiprocessing.context.ForkServerProcess._Popen(process_obj)


class _WorkerForkServerContext(multiprocessing.context.ForkServerContext):
    """The forkserver start method, with workers that skip ``__main__``."""

    Process = _WorkerProcess


# The Python versions whose forkserver ``_launch`` `_popen_without_main`
# repeats; on others, workers start as multiprocessing's own forkserver
# starts them (running the main module again).
_LAUNCH_KNOWN = (3, 10) <= sys.version_info[:2] <= (3, 13)


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
