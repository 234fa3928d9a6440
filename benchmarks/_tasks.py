"""The functions that run in workers, importable under every start method.

Every library gets the very same functions, so the figures differ only by
what the library does around them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing would cost each fresh worker 2-5 ms of importing, counted as start-up
    from typing import TypeVar

    T = TypeVar("T")


def tiny(x: int) -> int:
    """A task that costs nothing: what is measured is the library's overhead."""
    return x + 1


def echo(payload: T) -> T:
    """Send the argument back, to measure the cost of moving data both ways."""
    return payload


def spin(iterations: int) -> int:
    """Pure-Python CPU work holding the GIL; `iterations` is calibrated to a duration."""
    total = 0
    for i in range(iterations):
        total += i
    return total
