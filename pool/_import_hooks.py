"""Run code right after a module is imported, without importing it first.

A worker owes the caller two things that live in other modules: its
``logging`` records go to the caller (`pool._worker_logs`), and
``multiprocessing`` sees it as the caller's child (`pool._zygote`). Importing
both before the first task costs a fresh pool about 8 ms of its start, for
tasks that mostly use neither. So a worker arranges both for the moment the
module is imported, by the task or by anything else: at once if it is loaded
already, else through a finder placed first on ``sys.meta_path`` that wraps
the module's loader.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from typing import Any

__all__ = ["when_imported"]

Callback = Callable[[ModuleType], None]

# Module name: what to run once it is imported. A name leaves when it is.
# Read by every import once the finder is on sys.meta_path: one dict lookup.
_waiting: dict[str, list[Callback]] = {}


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once module ``name`` is imported: now, if it is already."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    _waiting.setdefault(name, []).append(callback)
    if _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)


class _Finder:
    """Finds nothing itself: gives a waited-for module's spec a loader that runs the callbacks."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is _Finder:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None  # not found: the import fails as it would without us
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
        return spec


class _Loader:
    """The module's own loader, then the callbacks; the module keeps its own loader."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        # Popped here, not when found: a spec found but never loaded
        # (importlib.util.find_spec) must not take the callbacks with it. The
        # finder stays on sys.meta_path: taking it out could make another
        # thread's import, walking that list, skip the finder after it.
        callbacks = _waiting.pop(module.__name__, [])
        for callback in callbacks:
            try:
                callback(module)
            except Exception:  # noqa: BLE001  # the import itself succeeded: the task must get its module
                import traceback

                print(f"pool: a hook on the import of {module.__name__} failed:", file=sys.stderr)
                traceback.print_exc()

    def __getattr__(self, name: str) -> Any:
        # get_source, is_package, ...: a spec found and not loaded yet
        # (importlib.util.find_spec) still answers as its own loader would.
        return getattr(self._loader, name)
