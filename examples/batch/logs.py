"""The job of the batch example: parse one web-server access-log line.

Run by ``pool run logs:parse access.log`` from this directory; see
``run_example.py`` for the whole tour.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_LINE = re.compile(
    r'(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)


def parse(line: str) -> dict[str, Any]:
    """One log line as a record; a line that does not parse raises ValueError."""
    match = _LINE.match(line)
    if match is None:
        raise ValueError(f"not an access-log line: {line[:60]!r}")
    fields = match.groupdict()
    return {
        "ip": fields["ip"],
        "time": fields["time"],
        "method": fields["method"],
        "path": fields["path"],
        "status": int(fields["status"]),
        "bytes": 0 if fields["size"] == "-" else int(fields["size"]),
        # Some real work per line: a stable visitor id, as a pseudonymized log would keep.
        "visitor": hashlib.blake2b(fields["ip"].encode(), digest_size=6).hexdigest(),
    }
