"""The fork server (`pool._zygote`): what workers inherit, and what happens when it dies."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from _support import Handshake, worker_pids
from _tasks import announce, read_fifo
from conftest import close, wait_gone

from pool import InitializerFailed, Pool, _server
from pool._start import server_pid

ROOT = Path(__file__).parent.parent


def _identity() -> dict[str, Any]:
    parent = multiprocessing.parent_process()
    return {
        "parent": None if parent is None else parent.pid,
        "name": multiprocessing.current_process().name,
        "authkey": bytes(multiprocessing.current_process().authkey),
        "start_method": multiprocessing.get_start_method(),
    }


def test_workers_look_like_multiprocessing_children(pool: Pool) -> None:
    """Code in a task can ask multiprocessing whether it runs in a worker, as under spawn."""
    seen = pool.submit(_identity).result(timeout=60)
    assert seen == {
        "parent": os.getpid(),
        "name": "pool-worker",
        "authkey": bytes(multiprocessing.current_process().authkey),
        "start_method": "forkserver",
    }


def _put(queue: Any, value: int) -> int:
    queue.put(value)
    return value


def test_a_manager_proxy_works_in_a_task(pool: Pool) -> None:
    """A manager's proxy authenticates with the caller's authkey, which workers share."""
    with multiprocessing.Manager() as manager:
        queue = manager.Queue()
        assert pool.submit(_put, queue, 7).result(timeout=60) == 7
        assert queue.get(timeout=60) == 7


def _where() -> tuple[str, list[str], str | None, bytes]:
    return os.getcwd(), sys.path, os.environ.get("POOL_TEST_SETTING"), sys.stdin.buffer.read()


def test_workers_start_with_the_callers_directory_path_and_environment(pool: Pool, tmp_path: Path) -> None:
    """As the caller is when each worker starts, not when the server started (``pool`` started it)."""
    pool.submit(_pid).result(timeout=60)
    here = os.getcwd()
    os.chdir(tmp_path)
    sys.path.append(str(tmp_path / "extra"))
    os.environ["POOL_TEST_SETTING"] = "set later"
    try:
        p = Pool(1)
        try:
            cwd, path, setting, stdin = p.submit(_where).result(timeout=60)
        finally:
            close(p)
    finally:
        os.chdir(here)
        sys.path.remove(str(tmp_path / "extra"))
        del os.environ["POOL_TEST_SETTING"]
    assert cwd == str(tmp_path)
    assert path[-1] == str(tmp_path / "extra")
    assert setting == "set later"
    assert stdin == b""  # not the caller's stdin: /dev/null


def _pid() -> int:
    return os.getpid()


def _kill_server() -> int | None:
    """SIGKILL the fork server, if one runs, and wait until it is gone; its pid."""
    pid = server_pid()
    if pid is not None:
        server = psutil.Process(pid)
        server.kill()
        server.wait(60)
    return pid


def test_a_killed_server_is_replaced_and_its_workers_stay(pool: Pool) -> None:
    """The workers are not the server's: they serve on, and new ones start from a new server."""
    pool.submit(_pid).result(timeout=60)
    workers = [psutil.Process(pid) for pid in worker_pids(pool)]
    killed = _kill_server()
    assert killed is not None
    assert all(worker.is_running() for worker in workers)
    assert pool.submit(_pid).result(timeout=60) in {w.pid for w in workers}
    assert set(worker_pids(pool)) == {w.pid for w in workers}  # none taken for dead

    for worker in workers:
        worker.kill()
    assert wait_gone(workers) == []
    assert pool.submit(_pid).result(timeout=60) not in {w.pid for w in workers}
    assert server_pid() not in (None, killed)


def _announce_then_wait(announce_path: str, release_path: str) -> int:
    announce(announce_path)
    read_fifo(release_path)
    return os.getpid()


def test_a_task_running_when_the_server_dies_finishes(pool: Pool, tmp_path: Path) -> None:
    running, release = Handshake(tmp_path), tmp_path / "release"
    os.mkfifo(release)
    future = pool.submit(_announce_then_wait, running.path, str(release))
    pid = running.wait_pid()
    killed = _kill_server()
    assert killed is not None
    with Pool(1) as other:  # starts a new server: the old one's workers must not notice
        assert other.submit(_pid).result(timeout=60) != pid
    assert server_pid() not in (None, killed)
    with open(release, "w") as fifo:
        fifo.write("go\n")
    assert future.result(timeout=60) == pid


def test_the_server_ignores_ctrl_c(pool: Pool) -> None:
    first = pool.submit(_pid).result(timeout=60)
    server = server_pid()
    assert server is not None
    os.kill(server, signal.SIGINT)  # a terminal sends it to the whole process group
    assert pool.submit(_pid).result(timeout=60) in set(worker_pids(pool))
    assert server_pid() == server
    assert first in set(worker_pids(pool))


def _pool_in_a_forked_child(results: Any) -> None:
    with Pool(1) as p:
        results.put((p.submit(_pid).result(timeout=60), server_pid()))


def test_a_forked_caller_starts_its_own_server(pool: Pool) -> None:
    """A process forked from the caller must not write into the caller's server socket."""
    pool.submit(_pid).result(timeout=60)
    server = server_pid()
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    child = context.Process(target=_pool_in_a_forked_child, args=(results,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    worker, child_server = results.get()
    assert child_server not in (None, server)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    assert server_pid() == server
    assert pool.submit(_pid).result(timeout=60) in set(worker_pids(pool))


SERVER_OF_A_SCRIPT = """
import sys
from pool import InitializerFailed, Pool, _server
from pool._start import server_pid

with Pool(1) as p:
    p.submit(abs, -1).result(timeout=60)
    print(server_pid(), flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def test_the_server_ends_with_its_caller(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SERVER_OF_A_SCRIPT))
    with subprocess.Popen(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            server = psutil.Process(int(process.stdout.readline()))
            tree = [server, *server.children(recursive=True)]
            process.kill()  # no shutdown, no atexit: the caller just vanishes
            process.wait(60)
            assert wait_gone(tree, timeout=60) == []
        finally:
            process.kill()


def test_a_server_started_above_descriptor_1023(tmp_path: Path) -> None:
    """The server waits with poll: the caller's descriptor numbers, kept, may be past select's reach."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("cannot open 1,200 descriptors here")
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == resource.RLIM_INFINITY else hard, hard)
    )
    held = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        _kill_server()
        with Pool(1) as p:
            assert p.submit(_pid).result(timeout=60) != os.getpid()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _pipes() -> set[str]:
    return {
        target
        for target in (_readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
        if target
    }


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_a_worker_holds_no_status_pipe(pool: Pool) -> None:
    """Else the caller would wait for ever on a server that died before it wrote the pid."""
    pool.submit(_pid).result(timeout=60)
    statuses = {_readlink(f"/proc/self/fd/{w.process._popen._status}") for w in pool._supervisor._workers}
    assert all(s.startswith("pipe:") for s in statuses)
    assert not statuses & pool.submit(_pipes).result(timeout=60)


def test_the_empty_path_entry_is_the_directory_the_caller_started_in(tmp_path: Path) -> None:
    here = os.getcwd()
    sys.path.insert(0, "")
    os.chdir(tmp_path)
    try:
        with Pool(1) as p:
            _, path, _, _ = p.submit(_where).result(timeout=60)
    finally:
        os.chdir(here)
        sys.path.remove("")
    assert "" not in path
    assert path[0] == multiprocessing.process.ORIGINAL_DIR  # type: ignore[attr-defined]


def _thread_then_return(announce_path: str, release_path: str, marker: str) -> None:
    def later() -> None:
        announce(announce_path)
        read_fifo(release_path)
        Path(marker).write_text("done")

    threading.Thread(target=later).start()  # not a daemon: the worker waits for it at exit


def test_a_worker_waits_for_its_tasks_threads_before_it_exits(tmp_path: Path) -> None:
    running, release, marker = Handshake(tmp_path), tmp_path / "release", tmp_path / "marker"
    os.mkfifo(release)
    p = Pool(1)
    try:
        p.submit(_thread_then_return, running.path, str(release), str(marker)).result(timeout=60)
        running.wait()
        p.shutdown(wait=False)  # the worker is told to stop while its thread still runs
        with open(release, "w") as fifo:
            fifo.write("go\n")
        p.shutdown(wait=True)
    finally:
        close(p)
    assert marker.read_text() == "done"


def test_a_stopped_server_is_killed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_server, "TIMEOUT", 3.0)
    with Pool(1) as p:
        p.submit(_pid).result(timeout=60)
    stopped = psutil.Process(server_pid() or 0)
    stopped.suspend()
    try:
        with Pool(1) as p:
            assert p.submit(_pid).result(timeout=60) != os.getpid()
        stopped.wait(60)  # killed, and reaped
        assert server_pid() not in (None, stopped.pid)
    finally:
        if stopped.is_running():
            stopped.kill()


def test_a_server_that_cannot_start_breaks_the_pool_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _kill_server()
    monkeypatch.setattr(_server.spawn, "get_executable", lambda: b"/nonexistent/python")
    p = Pool(1)
    try:
        with pytest.raises(InitializerFailed, match=r"could not be started 3 times in a row.*nonexistent"):
            p.submit(_pid).result(timeout=60)
    finally:
        close(p)


def _say(text: str) -> None:
    print(text, flush=True)


def test_workers_write_where_the_callers_stdout_goes_now(pool: Pool, tmp_path: Path) -> None:
    pool.submit(_pid).result(timeout=60)  # the server runs, with stdout as it was
    out = tmp_path / "out"
    saved = os.dup(1)
    try:
        with open(out, "w") as file:
            os.dup2(file.fileno(), 1)
        with Pool(1) as p:
            p.submit(_say, "to the new stdout").result(timeout=60)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert out.read_text() == "to the new stdout\n"
