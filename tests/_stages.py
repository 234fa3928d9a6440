"""Stage functions for the pipeline tests (importable by workers under every start method)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from _tasks import announce


def double(x: int) -> int:
    return 2 * x


def is_even(x: int) -> bool:
    return x % 2 == 0


def is_multiple_of_5(x: int) -> bool:
    return x % 5 == 0


def upto(x: int) -> range:
    return range(x % 4)


def words(line: str) -> list[str]:
    return line.split()


def fail_at(target: int, x: int) -> int:
    if x == target:
        raise ValueError(f"item {x} is bad")
    return x


def crash_at(target: int, how: str, x: int) -> int:
    """Crash this worker, the way ``how`` names, on ``target``."""
    if x == target:
        if how == "segfault":
            ctypes.string_at(0)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
            threading.Event().wait()
        os._exit(3)
    return x


def crash_once_at(target: int, marker: str, x: int) -> int:
    """SIGKILL this worker the first time it sees ``target`` (per marker file)."""
    if x == target and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def block_at(target: int, path: str | None, x: int) -> int:
    """Block forever on ``target``, first announcing it through a FIFO if given."""
    if x == target:
        if path is not None:
            announce(path)
        threading.Event().wait()
    return x


def announce_first(path: str, x: int) -> int:
    if x == 0:
        announce(path)
    return x


def unpicklable_at(target: int, x: int) -> Any:
    return threading.Lock() if x == target else x


def not_iterable(x: int) -> int:
    return x


def touch(directory: str, x: int) -> None:
    with open(os.path.join(directory, str(x)), "w"):
        pass


def exit_at(target: int, x: int) -> int:
    if x == target:
        raise SystemExit(4)
    return x


def counting(limit: int | None, reads: list[int]) -> Iterator[int]:
    """An endless (or ``limit``-long) source that counts what it handed out."""
    n = 0
    while limit is None or n < limit:
        reads[0] = n + 1
        yield n
        n += 1


def fail_once_at(target: int, directory: str, x: int) -> int:
    """Raise on ``target``; a second call for any item raises something else."""
    with open(os.path.join(directory, str(x)), "x"):  # exclusive: a second run cannot open it
        pass
    if x == target:
        raise ValueError(f"item {x} is bad")
    return x


def greater_than(limit: int, x: int) -> bool:
    return x > limit


def crash_counting_at(target: int, directory: str, x: int) -> int:
    """Leave a file per run on ``target``, then kill this worker."""
    if x == target:
        with open(os.path.join(directory, f"run-{os.getpid()}"), "w"):
            pass
        os._exit(3)
    return x


def stop_at(target: int, x: int) -> int:
    """Raise StopIteration on ``target``: the builtin map would take it for its end."""
    if x == target:
        raise StopIteration
    return x


class NoTruth:
    """A value whose truth cannot be taken, as a numpy array's."""

    def __bool__(self) -> bool:
        raise ValueError("the truth value of this object is ambiguous")


def no_truth_at(target: int, x: int) -> Any:
    return NoTruth() if x == target else x % 2 == 0


def big(size: int, x: int) -> bytes:
    return bytes(size)


def slow_at(target: int, seconds: float, x: int) -> int:
    """Take ``seconds`` (simulated work) on ``target``."""
    if x == target:
        time.sleep(seconds)  # work, not synchronization
    return x
