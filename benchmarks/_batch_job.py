"""The batch benchmark's pieces: its function, and the hand-written script it is compared with.

``python -m benchmarks._batch_job INPUT OUTPUT`` is what a user would write
without ``pool run``: read JSON Lines, ``multiprocessing.Pool.imap_unordered``
(chunks of 1,000), one JSON record per input to OUTPUT, failures to
OUTPUT.errors.jsonl. No resume, no progress, no timeouts: the floor of
the I/O the command does.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import traceback
from typing import Any


def inc(x: int) -> int:
    return x + 1


def _record(numbered: tuple[int, str]) -> tuple[bool, str]:
    line, text = numbered
    value: Any = json.loads(text)
    try:
        result = json.dumps(inc(value))
    except Exception as exc:  # noqa: BLE001  # a failure record, as the command writes
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
        return False, f'{{"line": {line}, "input": {text}, "error": {json.dumps(error)}}}\n'
    return True, f'{{"line": {line}, "input": {text}, "result": {result}}}\n'


def main(argv: list[str]) -> int:
    source, output = argv[1], argv[2]
    with (
        open(source) as lines,
        open(output, "w") as out,
        open(output + ".errors.jsonl", "w") as errors,
        multiprocessing.Pool() as pool,
    ):
        numbered = ((n, text.strip()) for n, text in enumerate(lines, 1) if text.strip())
        for ok, record in pool.imap_unordered(_record, numbered, chunksize=1000):
            (out if ok else errors).write(record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
