"""Functions the tests run in workers; importable, so every start method finds them."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn

# --- plain work ---------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def identity(x: Any) -> Any:
    return x


def getpid(_: object = None) -> int:
    return os.getpid()


def loaded(modules: list[str]) -> list[bool]:
    """Which of ``modules`` this worker has imported."""
    return [name in sys.modules for name in modules]


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)  # simulated work, not synchronization
    return value


_calls = 0


def count_calls() -> tuple[int, int]:
    """Module state in a worker: (pid, calls so far in this worker)."""
    global _calls
    _calls += 1
    return os.getpid(), _calls


# --- handshakes -----------------------------------------------------------------


def announce(path: str, extra: str = "") -> None:
    """Tell the test, through its FIFO, that this task runs and where."""
    with open(path, "w") as fifo:
        fifo.write(f"{os.getpid()} {extra}\n")


def announce_then(path: str, seconds: float, value: Any) -> Any:
    """Announce, then work for a while (simulated) and return ``value``."""
    announce(path)
    time.sleep(seconds)  # simulated work, not synchronization
    return value


def block_forever(path: str | None = None) -> NoReturn:
    if path is not None:
        announce(path)
    threading.Event().wait()
    raise AssertionError("unreachable")


def start_child_and_block(path: str) -> NoReturn:
    """Start a grandchild process, announce both pids, then block forever."""
    child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
    announce(path, str(child.pid))
    threading.Event().wait()
    raise AssertionError("unreachable")


# --- failures ---------------------------------------------------------------------


class MismatchError(Exception):
    """Its __init__ does not take its own args: breaks naive unpickling."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"code {code}: {reason}")
        self.code = code
        self.reason = reason


def raise_mismatch(code: int, reason: str) -> NoReturn:
    raise MismatchError(code, reason)


def raise_value_error(message: str) -> NoReturn:
    raise ValueError(message)


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(message: str) -> NoReturn:
    raise UnpicklableError(message)


def return_unpicklable() -> Any:
    return threading.Lock()


def crash(how: str) -> Any:
    """Crash the current process in the way named by ``how``."""
    if how == "raise":
        raise ValueError("crash requested")
    if how == "sys.exit":
        sys.exit(3)
    if how == "os._exit":
        os._exit(3)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        threading.Event().wait()
    raise AssertionError(f"unknown crash {how!r}")


class CrashAtUnpickle:
    """Crashes whoever unpickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        return (crash, (self.how,))


class CrashAtPickle:
    """Crashes whoever pickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        crash(self.how)
        raise AssertionError("unreachable")


def return_crash_at_pickle(how: str) -> CrashAtPickle:
    return CrashAtPickle(how)


def return_crash_at_unpickle(how: str) -> CrashAtUnpickle:
    return CrashAtUnpickle(how)


def die_once(marker: str) -> str:
    """Kill the worker the first time (per marker file), succeed after."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def always_die() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()
    raise AssertionError("unreachable")


# --- initializers -------------------------------------------------------------------

_initialized: Any = None


def init_store(value: Any) -> None:
    global _initialized
    _initialized = value


def get_initialized(_: object = None) -> Any:
    return _initialized


def init_fail() -> NoReturn:
    raise RuntimeError("initializer refused")


def init_exit() -> NoReturn:
    os._exit(9)


def init_first_only(marker: str) -> None:
    """Succeeds in the first worker that starts; every later start fails."""
    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)


def make_bytes(size: int) -> bytes:
    return b"r" * size


def exit_once(marker: str) -> str:
    """The worker exits the first time this really runs; it succeeds after."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(5)
    return "ok"


_held: list[bytes] = []


def hold_memory(megabytes: int) -> int:
    """Keep ``megabytes`` of touched memory alive in this worker; return the pid."""
    _held.append(b"\1" * (megabytes * 1024 * 1024))
    return os.getpid()


def exhaust_memory() -> NoReturn:
    """Allocate without end under an address-space limit: MemoryError, not a dead worker."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, resource.RLIM_INFINITY))
    hog = []
    while True:
        hog.append(bytearray(64 * 1024 * 1024))


def log_and_return(message: str) -> int:
    import logging

    logging.getLogger("tests.worker").warning("from the worker: %s", message)
    logging.getLogger("tests.worker").info("an info line")
    try:
        raise KeyError("logged")
    except KeyError:
        logging.getLogger("tests.worker").exception("with a traceback")
    return os.getpid()


def print_then_die(text: str) -> NoReturn:
    print(text)
    os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()
    raise AssertionError("unreachable")


def big_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` bytes, the same for the same seed, not all alike."""
    block = bytes((seed + i) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


def open_segments(_: object = None) -> int:
    """How many shared-memory segments of the pool's this process holds open."""
    return count_segments(os.getpid())


def count_segments(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "memfd:pool-buffers" in os.readlink(f"/proc/{pid}/fd/{name}"):
                count += 1
        except OSError:  # closed meanwhile
            pass
    return count


def describe_buffers(value: Any) -> tuple[str, int, int]:
    """The type, length and checksum of what arrived."""
    import zlib

    return type(value).__name__, len(value), zlib.crc32(value)


def add_one_in_place(array: Any) -> Any:
    array += 1
    return array


def die_once_holding(marker: str, data: bytes) -> int:
    """Kill the worker the first time (per marker file); the length of ``data`` after."""
    die_once(marker)
    return len(data)


def die_holding(data: bytes) -> NoReturn:
    """Kill the worker, with ``data`` as its argument."""
    always_die()


def read_fifo(path: str) -> str:
    """Block until the test writes a line to the FIFO at ``path``; return it."""
    with open(path) as fifo:
        return fifo.readline().strip()


def announce_then_read(path: str, release: str) -> str:
    """Announce through ``path``, then block until the test writes a line to ``release``."""
    announce(path)
    return read_fifo(release)


def counted_segments(_: object = None) -> int:
    """How many segments this process counts as its own (see pool._segments.MAX_LIVE)."""
    from pool import _segments

    return len(_segments._live)


def fork_then_die(path: str, release: str) -> NoReturn:
    """Start a child that keeps this worker's descriptors open (its pipe among them),
    have it announce itself; once the test writes to ``release``, die by SIGKILL. The
    pipe never reads as closed."""
    if os.fork() == 0:
        try:
            announce(path)
            threading.Event().wait()
        finally:
            os._exit(0)
    read_fifo(release)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def die_when_released(release: str) -> NoReturn:
    """Once the test writes to ``release``, die by SIGKILL."""
    read_fifo(release)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def record_spins(path: str) -> None:
    """From now on, this worker appends each of its spins for a next task (seconds) to ``path``."""
    import pool._worker

    real = pool._worker.spin

    def recorded(poller: Any, seconds: float) -> list[tuple[int, int]]:
        with open(path, "a") as out:
            out.write(f"{seconds}\n")
        return real(poller, seconds)

    pool._worker.spin = recorded  # type: ignore[assignment]


def read_lines(path: str) -> list[str]:
    with open(path) as lines:
        return lines.read().split()
