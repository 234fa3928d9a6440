"""Ctrl-C and SIGTERM in the caller: bounded stop, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from _support import Handshake
from conftest import wait_gone

TESTS = Path(__file__).parent
ROOT = TESTS.parent

# Every body below blocks in the pool (running tasks that never end, more
# queued) once the task has announced itself; the test then signals it.
BODIES = {
    "result() in a with block": """
        with Pool(2) as p:
            futures = [p.submit(start_child_and_block, {path!r})]
            futures += [p.submit(square, i) for i in range(100)]
            futures[0].result()
    """,
    "map in a with block": """
        with Pool(2) as p:
            p.submit(start_child_and_block, {path!r})
            for _ in p.map(block_forever, [None] * 50, chunksize=1):
                pass
    """,
    "result() without a with block": """
        p = Pool(2)
        futures = [p.submit(start_child_and_block, {path!r})]
        futures += [p.submit(square, i) for i in range(100)]
        futures[0].result()
    """,
}


def _start(body: str, path: str) -> subprocess.Popen[bytes]:
    script = "from pool import Pool\nfrom _tasks import block_forever, square, start_child_and_block\n"
    script += textwrap.dedent(body.format(path=path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
    return subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)


@pytest.mark.parametrize("body", list(BODIES))
def test_ctrl_c_stops_everything_within_bounded_time(tmp_path: Path, body: str) -> None:
    handshake = Handshake(tmp_path)
    caller = _start(BODIES[body], handshake.path)
    try:
        worker_pid, child_pid = (int(x) for x in handshake.wait().split())
        family = [p for p in psutil.Process(caller.pid).children(recursive=True)]
        assert worker_pid in {p.pid for p in family} and child_pid in {p.pid for p in family}
        start = time.monotonic()
        caller.send_signal(signal.SIGINT)
        _, stderr = caller.communicate(timeout=60)
        elapsed = time.monotonic() - start
        assert b"KeyboardInterrupt" in stderr, stderr.decode()
        assert caller.returncode != 0
        # Sentinel, then SIGTERM after a short grace, then SIGKILL: seconds, not forever.
        assert elapsed < 30, elapsed
        assert not wait_gone(family, timeout=10)
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.communicate()


def test_sigterm_to_the_caller_leaves_no_process(tmp_path: Path) -> None:
    handshake = Handshake(tmp_path)
    caller = _start(BODIES["result() in a with block"], handshake.path)
    try:
        handshake.wait()
        family = list(psutil.Process(caller.pid).children(recursive=True))
        caller.send_signal(signal.SIGTERM)
        caller.communicate(timeout=60)
        assert caller.returncode == -signal.SIGTERM
        assert not wait_gone(family, timeout=10)
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.communicate()
