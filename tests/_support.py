"""Test-side helpers: handshakes with running tasks, and pool introspection."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pool import Pool


class Handshake:
    """A FIFO a task writes a line to, so a test knows the task is running.

    ``wait()`` blocks until a task (see ``_tasks.announce``) opened the FIFO
    and wrote its line; there is no polling and no sleep.
    """

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / f"handshake-{time.monotonic_ns()}")
        os.mkfifo(self.path)

    def wait(self) -> str:
        while True:
            with open(self.path) as fifo:  # blocks until a writer opens it
                line = fifo.readline()
            if line:
                return line.strip()
            # End of file, nothing read: the writer of the previous handshake
            # had written and not yet closed when this open found it (a busy
            # machine). The next writer is the one waited for.

    def wait_pid(self) -> int:
        return int(self.wait().split()[0])


def worker_pids(p: Pool) -> list[int]:
    """The pids of the pool's current workers (private; for assertions only)."""
    return p._supervisor.worker_pids()
