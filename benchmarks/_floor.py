"""The hand-written floor: worker processes with one Pipe each, and nothing else.

No futures, no supervisor thread, no task ids, no error handling: the
parent pickles a call into a worker's pipe and reads the reply. A pool built
on pipes and pickle can approach these figures, not beat them, so they say
how much of a library's cost is its own bookkeeping.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, cast

IN_FLIGHT = 2  # chunks queued per worker, so it never waits for the parent


def _serve(conn: Connection) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        fn, arg, many = message
        conn.send([fn(x) for x in arg] if many else fn(arg))


class Floor:
    def __init__(self, workers: int) -> None:
        self._conns: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(workers):
            ours, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(target=_serve, args=(theirs,), daemon=True)
            process.start()
            theirs.close()
            self._conns.append(ours)
            self._processes.append(process)
        self._next = 0

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """One task to the next worker in turn, and its reply."""
        conn = self._conns[self._next]
        self._next = (self._next + 1) % len(self._conns)
        conn.send((fn, arg, False))
        return conn.recv()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], chunk: int) -> list[Any]:
        """``fn`` over ``items`` in order, in chunks dealt to the workers in turn."""
        starts = range(0, len(items), chunk)
        results: list[list[Any]] = [[] for _ in starts]
        queued: dict[Connection, deque[int]] = {conn: deque() for conn in self._conns}
        sent = 0

        def feed(conn: Connection) -> None:
            nonlocal sent
            while sent < len(starts) and len(queued[conn]) < IN_FLIGHT:
                first = starts[sent]
                conn.send((fn, list(items[first : first + chunk]), True))
                queued[conn].append(sent)
                sent += 1

        for conn in self._conns:
            feed(conn)
        while any(queued.values()):
            for ready in wait([conn for conn, indices in queued.items() if indices]):
                conn = cast(Connection, ready)
                results[queued[conn].popleft()] = conn.recv()
                feed(conn)
        return [result for chunk_results in results for result in chunk_results]

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for process in self._processes:
            process.join()
        for conn in self._conns:
            conn.close()
