"""Run one child process with a hard time limit, and leave no process behind.

The child runs in a session of its own, with a token in its environment
that every process it starts inherits. On timeout the whole tree is
killed. After the child exits, whatever still carries the token a few
seconds later (a worker a library forgot, a forkserver) is killed too, and
counted.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

TOKEN = "POOL_BENCH_TOKEN"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: `import pool` takes it


def compile_sources() -> None:
    """Write the checkout's bytecode, as an install does.

    Measurements import ``pool`` (and its workers import it again) from the
    working tree; without ``__pycache__`` (``PYTHONDONTWRITEBYTECODE`` set,
    say) each process would compile it first, and start-up figures would
    include that.
    """
    for package in ("pool", "benchmarks"):
        compileall.compile_dir(ROOT / package, quiet=1)


GRACE = 3.0  # seconds for a child's processes to exit on their own after it did

Status = Literal["ok", "timeout", "error"]


@dataclass
class Outcome:
    status: Status
    result: dict[str, Any] | None  # the child's JSON
    detail: str  # on error, the last line the child wrote to stderr
    leftovers: int  # processes still running after the child ended, killed
    hung_at_exit: bool  # printed its result, then did not exit in time
    seconds: float


def _carrying(token: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(TOKEN) == token:
                found.append(process)
    return found


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of ``processes`` still running (not even zombies) after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (running := [p for p in processes if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return running


def _reap(token: str, grace: float) -> int:
    """Kill the processes carrying ``token`` still running after ``grace`` s; how many."""
    stayed = _wait(_carrying(token), grace)
    _kill(stayed)
    return len(stayed)


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait(processes, 5)


def _kill_tree(child: subprocess.Popen[bytes]) -> None:
    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # its session, hence its group
    child.kill()
    child.wait()
    _kill(descendants)  # also those that left the group


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_child(spec: dict[str, Any], timeout: float) -> Outcome:
    """Measure one (library, workload) in ``python -m benchmarks._child SPEC``."""
    return run([sys.executable, "-m", "benchmarks._child", json.dumps(spec)], timeout)


def run(command: list[str], timeout: float) -> Outcome:
    """Run ``command`` from the checkout; its last line on stdout is its JSON result."""
    token = uuid.uuid4().hex
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, TOKEN: token}
    # Files, not pipes: a process the child leaves behind may hold them open.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            child.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(child)
        except BaseException:  # Ctrl-C: its own session did not get the signal
            _kill_tree(child)
            _reap(token, 0)
            raise
        seconds = time.perf_counter() - start
        leftovers = _reap(token, 0 if timed_out else GRACE)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    result: Any = None
    with contextlib.suppress(ValueError):
        result = json.loads(_last_line(stdout))
    if isinstance(result, dict):
        return Outcome("ok", result, "", 0 if timed_out else leftovers, timed_out, seconds)
    if timed_out:
        return Outcome("timeout", None, _last_line(stderr), 0, False, seconds)
    detail = _last_line(stderr) or f"exit code {child.returncode}, no result"
    return Outcome("error", None, detail, leftovers, False, seconds)
