"""What a worker imports only when a task needs it: logging, multiprocessing.

A fresh worker leaves both out (they cost a fresh pool's start several
milliseconds), yet a task that imports either later still gets its records
to the caller and still sees itself as the caller's child.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from pool import _import_hooks
from pool._import_hooks import when_imported

ROOT = Path(__file__).parent.parent


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    """A directory on ``sys.path`` for modules made by the test, forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in set(sys.modules) - before:
            del sys.modules[name]
        _import_hooks._waiting.clear()
        if _import_hooks._Finder in sys.meta_path:
            sys.meta_path.remove(_import_hooks._Finder)  # type: ignore[arg-type]


def _module(directory: Path, name: str, text: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(text))
    importlib.invalidate_caches()


def test_the_callback_runs_once_the_module_has_run(modules: Path) -> None:
    _module(modules, "hooked_a", "VALUE = 1\n")
    seen: list[tuple[str, int]] = []
    when_imported("hooked_a", lambda m: seen.append((m.__name__, m.VALUE)))
    assert seen == []
    import hooked_a  # type: ignore[import-not-found]

    assert seen == [("hooked_a", 1)]
    importlib.reload(hooked_a)
    assert seen == [("hooked_a", 1)]  # once
    assert not _import_hooks._waiting
    # Left in place: taken out, another thread's import walking the list could skip a finder.
    assert _import_hooks._Finder in sys.meta_path


def test_a_module_already_imported_calls_back_at_once(modules: Path) -> None:
    seen: list[ModuleType] = []
    when_imported("os", seen.append)
    assert seen == [os]
    assert not _import_hooks._waiting


def test_the_module_keeps_its_own_loader(modules: Path) -> None:
    _module(modules, "hooked_b", "import sys\nLOADER = __loader__\n")
    when_imported("hooked_b", lambda m: None)
    import hooked_b  # type: ignore[import-not-found]

    expected = type(importlib.util.spec_from_file_location("x", modules / "hooked_b.py").loader)  # type: ignore[union-attr]
    assert type(hooked_b.__loader__) is expected
    assert type(hooked_b.__spec__.loader) is expected
    assert type(hooked_b.LOADER) is expected


def test_a_spec_found_but_not_loaded_keeps_the_callback(modules: Path) -> None:
    _module(modules, "hooked_c", "")
    seen: list[str] = []
    when_imported("hooked_c", lambda m: seen.append(m.__name__))
    assert importlib.util.find_spec("hooked_c") is not None
    assert seen == []
    import hooked_c  # type: ignore[import-not-found]  # noqa: F401

    assert seen == ["hooked_c"]


def test_a_spec_found_but_not_loaded_answers_as_its_own_loader(modules: Path) -> None:
    _module(modules, "hooked_e", "VALUE = 1\n")
    when_imported("hooked_e", lambda m: None)
    spec = importlib.util.find_spec("hooked_e")
    assert spec is not None and spec.loader is not None
    assert spec.loader.is_package("hooked_e") is False  # type: ignore[attr-defined]
    assert "VALUE = 1" in spec.loader.get_source("hooked_e")  # type: ignore[attr-defined]


def test_a_failing_callback_is_reported_and_the_import_and_the_others_go_on(
    modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _module(modules, "hooked_f", "")
    seen: list[str] = []
    when_imported("hooked_f", lambda m: 1 / 0)  # type: ignore[func-returns-value]
    when_imported("hooked_f", lambda m: seen.append(m.__name__))
    import hooked_f  # type: ignore[import-not-found]

    assert sys.modules["hooked_f"] is hooked_f
    assert seen == ["hooked_f"]
    err = capsys.readouterr().err
    assert "a hook on the import of hooked_f failed" in err and "ZeroDivisionError" in err


def test_a_module_that_fails_to_import_keeps_the_callback(modules: Path) -> None:
    _module(modules, "hooked_d", "raise ValueError('not yet')\n")
    seen: list[str] = []
    when_imported("hooked_d", lambda m: seen.append(m.__name__))
    with pytest.raises(ValueError, match="not yet"):
        import hooked_d  # type: ignore[import-not-found]
    assert "hooked_d" not in sys.modules
    _module(modules, "hooked_d", "")
    import hooked_d  # type: ignore[import-not-found]  # noqa: F401

    assert seen == ["hooked_d"]


def test_a_missing_module_fails_as_without_the_hook(modules: Path) -> None:
    when_imported("hooked_missing", lambda m: None)
    with pytest.raises(ModuleNotFoundError, match="hooked_missing"):
        import hooked_missing  # type: ignore[import-not-found]  # noqa: F401


# The caller makes a pool in a fresh process, so its fork server is fresh
# too: the pool's first worker is forked before the server, idle, loads
# logging and multiprocessing for later workers.
LAZY_TASKS = """
import sys


def log_after_importing_logging(message):
    loaded = "logging" in sys.modules
    import logging

    logging.getLogger("lazy").warning(message)
    return loaded


def identity_after_importing_multiprocessing():
    loaded = "multiprocessing" in sys.modules
    import multiprocessing

    parent = multiprocessing.parent_process()
    return loaded, multiprocessing.current_process().name, None if parent is None else parent.pid
"""

CALLER = """
import logging
import os
import sys

from lazy_tasks import identity_after_importing_multiprocessing, log_after_importing_logging
from pool import Pool

records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger().addHandler(handler)

with Pool(1) as p:
    loaded = p.submit(log_after_importing_logging, "from a task").result(timeout=60)
    assert loaded is False, "the worker had logging already"
    got = [(r.getMessage(), r.processName) for r in records if r.name == "lazy"]
    # Named as multiprocessing would name it, though the worker has not imported it.
    assert got == [("from a task", "pool-worker")], got
    loaded, name, parent = p.submit(identity_after_importing_multiprocessing).result(timeout=60)
    assert loaded is False, "the worker had multiprocessing already"
    assert (name, parent) == ("pool-worker", os.getpid()), (name, parent)
print("ok")
"""


def test_a_worker_imports_logging_and_multiprocessing_only_for_a_task_that_does(tmp_path: Path) -> None:
    (tmp_path / "lazy_tasks.py").write_text(textwrap.dedent(LAZY_TASKS))
    (tmp_path / "caller.py").write_text(textwrap.dedent(CALLER))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "caller.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
