"""Memory: sizes users write, what a worker's process tree uses, and OOM kills."""

from __future__ import annotations

import os
import re

__all__ = ["OomWatch", "parse_size", "tree_rss"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(name: str, value: object) -> int:
    """Bytes from an int or a string like ``"512MB"`` or ``"1.5 GiB"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{name} must be a number of bytes or a string like '512MB', not {type(value).__qualname__}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name}: cannot read {value!r} as a size; write bytes or a number with a unit "
                "(KB, MB, GB, TB in powers of 1000, KiB, MiB, GiB, TiB in powers of 1024)"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{name} must be > 0 bytes, got {value!r}")
    return size


def tree_rss(pid: int) -> int | None:
    """Resident memory of a process and all its descendants, in bytes."""
    import psutil  # when first needed: it is most of the pool's import time

    try:
        root = psutil.Process(pid)
        total = int(root.memory_info().rss)
        for child in root.children(recursive=True):
            try:
                total += int(child.memory_info().rss)
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None


class OomWatch:
    """Reads the kernel's count of OOM kills in this cgroup (cgroup v2), if it can.

    Compared before and after a worker's death, it tells whether the OOM
    killer ran meanwhile; where the file is unreadable it says nothing.
    """

    def __init__(self, path: str | os.PathLike[str] = "/sys/fs/cgroup/memory.events") -> None:
        self._path = path

    def count(self) -> int | None:
        try:
            with open(self._path) as file:
                text = file.read()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, number = line.partition(" ")
            if key == "oom_kill":
                try:
                    return int(number)
                except ValueError:
                    return None
        return None
