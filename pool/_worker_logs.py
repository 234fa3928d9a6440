"""A worker's ``logging`` records, sent to the caller's handlers.

Imported only once the worker has ``logging`` loaded: a task that never
logs costs no import of it (see `pool._import_hooks`).
"""

from __future__ import annotations

import logging
import pickle
import sys
from collections.abc import Callable

from . import _protocol as proto
from . import _zygote

__all__ = ["forward_records"]


def forward_records(send: Callable[[bytes], None], level: int, task_name: Callable[[], str | None]) -> None:
    """Make the root logger send every record at ``level`` or above, and nothing else."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # inherited under fork: they would write twice
        root.removeHandler(handler)
    root.addHandler(_LogForwarder(send, task_name))
    root.setLevel(level)


class _LogForwarder(logging.Handler):
    """Sends each record to the supervisor, which hands it to the caller's logging.

    The record travels as a dict with its message already formatted (its
    ``args`` may not pickle) and its traceback as text, named after the task
    that emitted it.
    """

    def __init__(self, send: Callable[[bytes], None], task_name: Callable[[], str | None]) -> None:
        super().__init__()
        self._send = send
        self._task_name = task_name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = dict(record.__dict__)
            data["msg"] = record.getMessage()
            data["args"] = None
            if record.exc_info:
                data["exc_text"] = logging.Formatter().formatException(record.exc_info)
            data["exc_info"] = None
            data["task"] = self._task_name()
            if "multiprocessing" not in sys.modules and _zygote.process_name is not None:
                # logging names a process MainProcess unless multiprocessing,
                # loaded, says otherwise: this worker's name, as it would say.
                data["processName"] = _zygote.process_name
            try:
                payload = pickle.dumps((proto.LOG_RECORD, data), protocol=5)
            except Exception:  # noqa: BLE001  # an odd extra attribute: send the plain fields
                plain = {k: v for k, v in data.items() if isinstance(v, (str, int, float, type(None)))}
                payload = pickle.dumps((proto.LOG_RECORD, plain), protocol=5)
            self._send(payload)
        except Exception:  # noqa: BLE001  # logging must never break the task
            self.handleError(record)
