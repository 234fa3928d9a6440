"""Progress display: tqdm bars for iterators, and the batch command's progress.

tqdm is the ecosystem's standard: it draws on a terminal, renders as a
widget in notebooks (``tqdm.auto``), and degrades to carriage-return lines
elsewhere. The batch command prints plain periodic lines instead when its
stderr is not a terminal, so a log file gets a line every few seconds, not
a redrawn bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

# Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = 10.0


def progress_bar(iterable: Iterable[T], total: int | None, unit: str = "item") -> Iterator[T]:
    """Iterate ``iterable`` with a tqdm bar on stderr (a widget in notebooks)."""
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, unit=unit, dynamic_ncols=True))


class BatchProgress:
    """Done, failed, rate and ETA of a batch job, live or in plain lines."""

    def __init__(self, total: int | None, stream: IO[str] | None = None, interval: float = PLAIN_INTERVAL):
        self._stream = stream if stream is not None else sys.stderr
        self._total = total
        self._failed = 0
        self._start = time.monotonic()
        self._interval = interval
        self._last = self._start
        self._bar: Any = None
        if _is_terminal(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="input", file=self._stream, dynamic_ncols=True)

    def update(self, done: int = 0, failed: int = 0) -> None:
        """An input finished (the live bar; plain lines follow the commits)."""
        if self._bar is not None:
            self._bar.update(done + failed)
            if failed:
                self._failed += failed
                self._bar.set_postfix(failed=self._failed, refresh=False)

    def committed(self, finished: int, failed: int) -> None:
        """Records are on disk: a plain line, at most every ``interval`` seconds."""
        if self._bar is not None:
            return
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._stream.write(self.line(finished, failed) + "\n")
            self._stream.flush()

    def line(self, finished: int, failed: int) -> str:
        """One plain line: inputs done (committed), failed, rate and, with a known total, the ETA."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = finished / elapsed
        text = f"{finished:,}"
        if self._total is not None:
            text += f"/{self._total:,}"
        text += f" inputs, {failed:,} failed, {rate:,.0f}/s"
        if self._total is not None and rate > 0:
            text += f", ETA {_duration(max(0, self._total - finished) / rate)}"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
