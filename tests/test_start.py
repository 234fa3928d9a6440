"""How workers start: the default start method, and what a fresh worker runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pool
from pool._start import default_context

ROOT = Path(__file__).parent.parent

# A script without an ``if __name__ == "__main__"`` guard: under spawn, or
# multiprocessing's own forkserver, every worker would run its top level
# again (and fail, starting a pool while bootstrapping).
UNGUARDED = """
import os
import sys
from dataclasses import dataclass

from pool import Pool

with open(sys.argv[1], "a") as marks:
    marks.write(f"{os.getpid()}\\n")

@dataclass
class Point:
    x: int
    y: int

def swap(point):
    return Point(point.y, point.x), os.getpid()

with Pool(2) as p:
    results = list(p.map(swap, [Point(i, -i) for i in range(50)], chunksize=1))
    again = p.submit(swap, Point(1, 2)).result(timeout=60)

assert all(type(point) is Point for point, _ in results), results
assert [point.x for point, _ in results] == [-i for i in range(50)]
assert again[0] == Point(2, 1)
print(len({pid for _, pid in results} - {os.getpid()}))
"""


def _run_script(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(text))
    marks = tmp_path / "marks"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script), str(marks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    return result, marks


def test_workers_do_not_run_the_main_module_again(tmp_path: Path) -> None:
    result, marks = _run_script(tmp_path, UNGUARDED)
    assert result.returncode == 0, result.stderr
    assert len(marks.read_text().splitlines()) == 1  # the caller's run, and only it
    assert result.stdout.split() in (["1"], ["2"])  # ran in workers, not in the caller


def test_the_default_start_method_is_safe_with_threads() -> None:
    context = default_context()
    assert context.get_start_method() in ("forkserver", "spawn")


def _run_code(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter that imports this tree's pool."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_the_package_imports_no_runtime() -> None:
    """``import pool`` (what every worker does) loads none of the caller's machinery."""
    result = _run_code("import sys, pool; print(sorted(m for m in sys.modules if m.startswith('pool')))")
    assert (result.returncode, result.stdout.strip()) == (0, "['pool']"), result.stderr


def test_importing_pool_leaves_what_only_running_workers_need_to_the_first_submit() -> None:
    """On a fresh pool's way to its first result: the first submit imports these while its server boots."""
    later = ["multiprocessing.connection", "concurrent.futures.process", "pool._broken", "psutil"]
    code = (
        "import sys; from pool import Pool; "
        f"print([m for m in {later} if m in sys.modules]); "
        "p = Pool(1); p.submit(abs, -1).result(timeout=60); p.shutdown(); "
        f"print([m for m in {later} if m not in sys.modules])"
    )
    result = _run_code(code)
    assert (result.returncode, result.stdout.split("\n")[:2]) == (0, ["[]", "[]"]), result.stderr


def test_public_names_resolve_lazily_to_their_homes() -> None:
    for name in pool.__all__:
        value = getattr(pool, name)
        assert value is getattr(sys.modules[f"pool.{pool._HOMES[name]}"], name)
    assert set(dir(pool)) >= set(pool.__all__)
    try:
        pool.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def _loaded_in_worker() -> tuple[bool, list[str]]:
    return "psutil" in sys.modules, sorted(m for m in sys.modules if m.startswith("pool"))


def test_a_fresh_worker_imports_only_the_worker_side() -> None:
    with pool.Pool(1) as p:
        psutil_loaded, modules = p.submit(_loaded_in_worker).result(timeout=60)
    assert not psutil_loaded
    assert "pool._supervisor" not in modules and "pool._pipeline" not in modules
    assert "pool._worker" in modules


def test_what_the_fork_server_imports_before_it_serves_leaves_out_what_few_tasks_need() -> None:
    """Milliseconds of every fresh pool's start (see pool._zygote and pool._import_hooks)."""
    from pool._server import _PRELOAD

    left_out = ["typing", "logging", "multiprocessing", "traceback", "concurrent.futures"]
    imports = "; ".join(f"import {m}" for m in _PRELOAD)
    code = f"import sys; {imports}; print([m for m in {left_out} if m in sys.modules])"
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr


LOADS_BEFORE_IT_FORKS = """
import sys
from pool import Pool

with Pool(1) as p:
    assert "psutil" not in sys.modules, "imported with the pool"
    future = p.submit(abs, -1)
    # The first submit imported it in this thread: a fork of this process now
    # cannot find another thread inside that import.
    assert "psutil" in sys.modules
    assert future.result(timeout=60) == 1
assert "cloudpickle" not in sys.modules  # nothing needed it

with Pool(4, mp_context="fork") as p:
    # Forked workers: what the caller may import later is imported before the
    # first fork, or a worker forked during that import would wait for ever.
    assert p.submit(abs, -1).result(timeout=60) == 1
    assert "cloudpickle" in sys.modules
    futures = [p.submit(lambda x: x + 1, i) for i in range(16)]
    assert [f.result(timeout=60) for f in futures] == list(range(1, 17))
"""


def test_the_first_submit_loads_what_the_pool_needs_in_the_callers_thread(tmp_path: Path) -> None:
    result, _ = _run_script(tmp_path, LOADS_BEFORE_IT_FORKS)
    assert result.returncode == 0, result.stderr
