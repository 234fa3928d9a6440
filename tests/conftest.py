"""Fixtures shared by the suite: pools per start method, and leak checks.

Every test runs under pytest-timeout (see pyproject.toml); a hang dumps all
stacks through faulthandler first. Tests wait on handshakes (a FIFO, a
future), never on sleeps.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _support import Handshake

from pool import Pool
from pool._start import server_pid

START_METHODS = [m for m in ("forkserver", "spawn", "fork") if m in multiprocessing.get_all_start_methods()]

# How long processes may take to go away after a pool is shut down. Only an
# alarm: a passing test never waits this long.
EXIT_DEADLINE = 30.0


def _helper_pids() -> set[int]:
    """The long-lived helpers (our fork server, multiprocessing's), which are not ours to reap."""
    pids = {
        server_pid(),
        multiprocessing.forkserver._forkserver._forkserver_pid,  # type: ignore[attr-defined]
        multiprocessing.resource_tracker._resource_tracker._pid,  # type: ignore[attr-defined]
    }
    return {p for p in pids if p}


def stray_processes() -> list[psutil.Process]:
    """Descendants of this process other than multiprocessing's helpers."""
    helpers = _helper_pids()
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in descendants if p.pid not in helpers]


def running_strays() -> list[psutil.Process]:
    """`stray_processes` still running: an exited worker waits a moment to be reaped by the fork server."""
    return [p for p in stray_processes() if _running(p)]


def wait_gone(processes: list[psutil.Process], timeout: float = EXIT_DEADLINE) -> list[psutil.Process]:
    """Wait until the processes exit; return those still alive."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    """Every test leaves no process of its own behind."""
    before = {p.pid for p in stray_processes()}
    yield
    new = [p for p in stray_processes() if p.pid not in before]
    left = wait_gone(new)
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def close(p: Pool) -> None:
    """Shut a test's pool down in bounded time, even if the test left a task blocked.

    A failing test may leave a task that never ends; a plain shutdown would
    wait for it forever. Aborting stops running tasks as Ctrl-C does (the
    stop sentinel, then SIGTERM, then SIGKILL) and cancels what is queued.
    """
    p._supervisor.abort()
    p.shutdown(wait=True)


@pytest.fixture
def pool() -> Iterator[Pool]:
    """A 2-worker pool with the default start method, always shut down."""
    p = Pool(2)
    try:
        yield p
    finally:
        close(p)


@pytest.fixture
def any_pool(start_method: str) -> Iterator[Pool]:
    """A 2-worker pool under each start method in turn."""
    p = Pool(2, mp_context=start_method)
    try:
        yield p
    finally:
        close(p)


@pytest.fixture
def handshake() -> Iterator[Handshake]:
    with tempfile.TemporaryDirectory() as directory:
        yield Handshake(Path(directory))
