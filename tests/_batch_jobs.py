"""Functions the batch tests run through the ``pool run`` command (importable by workers)."""

from __future__ import annotations

import os
import threading
from typing import Any

from _tasks import announce


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int = 0) -> int:
    return a + b


def shout(text: str) -> str:
    return text.upper()


def label(name: str, count: str) -> str:
    return f"{name}:{int(count) * 2}"


def troubled(x: int) -> Any:
    """Fails in a different way on some inputs, doubles the others."""
    if x == 3:
        raise ValueError(f"{x} is not welcome")
    if x == 5:
        os._exit(3)
    if x == 6:
        return {x}  # a set: not JSON
    if x == 8:
        threading.Event().wait()  # past any timeout
    return 2 * x


def block_once(text: str) -> int:
    """Double the number on the line; the first time it sees POOL_TEST_BLOCK_AT, announce and block."""
    n = int(text)
    marker = os.environ.get("POOL_TEST_MARKER")
    if n == int(os.environ.get("POOL_TEST_BLOCK_AT", "-1")) and marker and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        announce(os.environ["POOL_TEST_FIFO"])
        threading.Event().wait()
    return 2 * n


NOT_CALLABLE = 42
