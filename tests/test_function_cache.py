"""Functions are sent to each worker once and cached there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from _tasks import count_calls

import pool._protocol as protocol
from pool import Pool

ROOT = Path(__file__).parent.parent


def test_module_state_lives_on_in_a_worker() -> None:
    with Pool(1) as p:
        calls = [p.submit(count_calls).result(timeout=60)[1] for _ in range(5)]
    assert calls == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_main_module_state_lives_on_in_a_worker(method: str) -> None:
    """A function from __main__ travels by value, once, so its globals persist."""
    script = textwrap.dedent(
        f"""
        from pool import Pool

        seen = []

        def remember(x):
            seen.append(x)
            return list(seen)

        if __name__ == "__main__":
            with Pool(1, mp_context={method!r}) as p:
                print([p.submit(remember, i).result(timeout=60) for i in range(3)])
                print(list(p.map(remember, [7], chunksize=1)))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[[0], [0, 1], [0, 1, 2]]"
    assert lines[1] == "[[0, 1, 2, 7]]"


def _constant(value: int) -> Callable[[], int]:
    return lambda: value


@pytest.mark.parametrize("workers", [1, 2])
def test_more_functions_than_the_cache_holds(workers: int) -> None:
    """Evictions on both ends stay in step (see pool._protocol.LruKeys)."""
    count = protocol.FUNCTION_CACHE_SIZE * 2 + 7
    functions = [_constant(i) for i in range(count)]
    with Pool(workers) as p:
        # Interleave old and new functions so evicted ones come back.
        order = [*range(count), *range(0, count, 3), *reversed(range(count))]
        futures = [p.submit(functions[i]) for i in order]
        assert [f.result(timeout=60) for f in futures] == order


def test_callable_objects_are_sent_with_their_current_state() -> None:
    class Scale:
        def __init__(self) -> None:
            self.factor = 1

        def __call__(self, x: int) -> int:
            return x * self.factor

    scale = Scale()
    with Pool(1) as p:
        assert p.submit(scale, 5).result(timeout=60) == 5
        scale.factor = 3
        assert p.submit(scale, 5).result(timeout=60) == 15


def test_builtin_methods_are_sent_with_their_objects_current_state() -> None:
    table = {"k": 1}
    getter = table.get
    with Pool(1) as p:
        assert p.submit(getter, "k").result(timeout=60) == 1
        table["k"] = 2
        assert p.submit(getter, "k").result(timeout=60) == 2
        assert p.submit(len, [1, 2, 3]).result(timeout=60) == 3


def test_lru_keys() -> None:
    keys: protocol.LruKeys[int] = protocol.LruKeys(2)
    assert keys.touch(1) is None
    assert keys.touch(2) is None
    assert keys.touch(1) is None  # 1 is now the most recent
    assert keys.touch(3) == 2
    assert 1 in keys and 3 in keys and 2 not in keys
    assert len(keys) == 2


def test_module_functions_are_named_by_reference_without_cloudpickle() -> None:
    """As cloudpickle would name them, so neither side must load it for them."""
    import pickle
    import types

    import _tasks
    import cloudpickle

    from pool._serialize import _named_by_reference, dumps_function

    assert _named_by_reference(_tasks.square)
    assert _named_by_reference(abs)
    assert dumps_function(_tasks.square) == pickle.dumps(_tasks.square, protocol=5)

    def local(x: int) -> int:
        return x

    assert not _named_by_reference(local)
    assert not _named_by_reference(lambda x: x)
    main_function = types.FunctionType(local.__code__, {"__name__": "__main__"}, "square")
    main_function.__module__ = "__main__"
    assert not _named_by_reference(main_function)
    impostor = types.FunctionType(local.__code__, {}, "square")
    impostor.__module__, impostor.__qualname__ = "_tasks", "square"
    assert not _named_by_reference(impostor)  # the module's square is another function
    cloudpickle.register_pickle_by_value(_tasks)
    try:
        assert not _named_by_reference(_tasks.square)
    finally:
        cloudpickle.unregister_pickle_by_value(_tasks)


ONLY_MODULE_FUNCTIONS = """
import sys
from pool import Pool
from _tasks import loaded

assert "psutil" not in sys.modules and "cloudpickle" not in sys.modules, "imported with the pool"
with Pool(1) as p:
    in_worker = p.submit(loaded, ["cloudpickle", "multiprocessing.connection"]).result(timeout=60)
print(in_worker, "cloudpickle" in sys.modules)
"""


def test_a_job_of_module_functions_never_loads_cloudpickle(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(ONLY_MODULE_FUNCTIONS)
    tests = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)])),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[False,", "False]", "False"]
