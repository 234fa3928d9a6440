"""Shutdown: every future ends, workers leave by the sentinel or are made to, nothing leaks."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from _support import Handshake
from _tasks import announce_then, block_forever, sleep_then, square
from conftest import wait_gone

import pool._supervisor as supervisor_module
from pool import Pool, PoolClosed

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_context_manager_waits_for_results() -> None:
    with Pool(2) as p:
        futures = [p.submit(sleep_then, 0.01, i) for i in range(10)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(10))


def test_submit_after_shutdown_raises_pool_closed() -> None:
    p = Pool(2)
    p.submit(square, 1).result(timeout=60)
    p.shutdown()
    with pytest.raises(PoolClosed):
        p.submit(square, 2)
    with pytest.raises(RuntimeError):  # as ProcessPoolExecutor raises
        list(p.map(square, [1]))
    p.shutdown()  # twice is fine


def test_shutdown_without_wait_still_finishes_every_future() -> None:
    p = Pool(2)
    futures = [p.submit(sleep_then, 0.01, i) for i in range(20)]
    p.shutdown(wait=False)
    assert [f.result(timeout=60) for f in futures] == list(range(20))
    p.shutdown(wait=True)


def test_cancel_futures_cancels_queued_and_finishes_running(handshake: Handshake) -> None:
    p = Pool(1)
    running = p.submit(announce_then, handshake.path, 0.2, "ran")
    handshake.wait()
    queued = [p.submit(square, i) for i in range(50)]
    p.shutdown(wait=True, cancel_futures=True)
    assert running.result() == "ran"
    assert all(f.done() for f in queued)
    assert any(f.cancelled() for f in queued)
    for f in queued:
        assert f.cancelled() or f.result() is not None


def test_unused_pool_starts_no_process() -> None:
    before = len(psutil.Process().children(recursive=True))
    p = Pool(4)
    p.shutdown()
    assert len(psutil.Process().children(recursive=True)) == before


def test_no_file_descriptor_leak() -> None:
    with Pool(2) as warm:  # start the forkserver and load modules first
        warm.submit(square, 1).result(timeout=60)
    fds = psutil.Process().num_fds()
    for _ in range(3):
        with Pool(2) as p:
            assert list(p.map(square, range(100))) == [i * i for i in range(100)]
    assert psutil.Process().num_fds() == fds


def test_dropped_pool_stops_its_workers() -> None:
    p = Pool(2)
    assert p.submit(square, 3).result(timeout=60) == 9
    supervisor = p._supervisor
    workers = [psutil.Process(pid) for pid in supervisor.worker_pids()]
    del p
    gc.collect()
    supervisor.join(60)
    assert not supervisor.alive
    assert not wait_gone(workers)


def test_worker_that_will_not_leave_is_terminated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task leaves a non-daemon thread running: the sentinel cannot end the worker."""
    monkeypatch.setattr(supervisor_module, "STOP_GRACE", 0.5)
    monkeypatch.setattr(supervisor_module, "TERMINATE_GRACE", 0.5)

    def linger(ignore_sigterm: bool) -> int:
        import threading

        if ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=threading.Event().wait).start()
        return os.getpid()

    for ignore_sigterm in (False, True):
        p = Pool(1)
        pid = p.submit(linger, ignore_sigterm).result(timeout=60)
        worker = psutil.Process(pid)
        p.shutdown(wait=True)
        assert not wait_gone([worker], timeout=10)


def test_script_that_never_shuts_down_still_gets_its_work_done(tmp_path: Path) -> None:
    marker = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        from pool import Pool
        from _tasks import sleep_then

        def touch(path):
            open(path, "w").close()

        if __name__ == "__main__":
            p = Pool(2)
            p.submit(sleep_then, 0.2, None)
            p.submit(touch, {str(marker)!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert marker.exists()


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path, method: str) -> None:
    """SIGKILL the caller while a worker is busy in a task that started a child."""
    handshake = Handshake(tmp_path)
    script = textwrap.dedent(
        f"""
        import threading
        from pool import Pool
        from _tasks import start_child_and_block

        if __name__ == "__main__":
            p = Pool(1, mp_context={method!r})
            p.submit(start_child_and_block, {handshake.path!r})
            threading.Event().wait()
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env=_env())
    try:
        worker_pid, grandchild_pid = (int(x) for x in handshake.wait().split())
        family = [psutil.Process(worker_pid), psutil.Process(grandchild_pid)]
        family += [c for c in psutil.Process(parent.pid).children(recursive=True) if c not in family]
        parent.send_signal(signal.SIGKILL)
        parent.wait(60)
        # Within seconds, not at the end of the task (it never ends).
        left = wait_gone(family, timeout=10)
        assert not left, [(p.pid, p.name()) for p in left]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_interrupted_wait_leaves_the_pool_usable(handshake: Handshake) -> None:
    with Pool(1) as p:
        blocked = p.options(timeout=30).submit(block_forever, handshake.path)
        pid = handshake.wait_pid()
        with pytest.raises(concurrent.futures.TimeoutError):
            blocked.result(timeout=0.05)  # waiting, not the task, timed out
        assert not blocked.done()
        os.kill(pid, signal.SIGKILL)
        assert p.submit(square, 5).result(timeout=60) == 25
