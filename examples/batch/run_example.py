"""A batch job over a generated access log: results, failures, and a resume after Ctrl-C.

Run it from anywhere:  python examples/batch/run_example.py

It writes ``access.log`` (100,000 lines, a few of them broken) into a
temporary directory, then runs the same job the command line would run::

    cd examples/batch && pool run logs:parse access.log -o parsed.jsonl

and prints the summary, the first records and the failures.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the workers import `logs` from here too

from logs import parse  # noqa: E402  # after the path is set

from pool import batch  # noqa: E402

LINES = 100_000


def write_log(path: Path) -> None:
    rng = random.Random(1)
    paths = ["/", "/index.html", "/api/items", "/api/items/42", "/login", "/static/app.js"]
    with path.open("w") as f:
        for number in range(LINES):
            if number % 20_000 == 7:
                f.write("garbage line that no parser accepts\n")
                continue
            ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
            method = rng.choice(["GET", "GET", "GET", "POST"])
            status = rng.choice([200, 200, 200, 304, 404, 500])
            size = rng.randrange(100, 50_000)
            f.write(
                f"{ip} - - [25/Nov/2026:10:{number // 6000 % 60:02d}:{number // 100 % 60:02d} +0000] "
                f'"{method} {rng.choice(paths)} HTTP/1.1" {status} {size}\n'
            )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        write_log(log)
        output = Path(tmp) / "parsed.jsonl"
        result = batch(parse, log, output, workers=os.cpu_count(), progress=True)
        print(result.summary())
        with output.open() as f:
            print("\nfirst record:", f.readline().strip())
        with Path(result.errors).open() as f:
            for line in f:
                record = json.loads(line)
                print(f"failed: line {record['line']}: {record['error']['message']}")
        # Running again with resume=True finds everything done and does nothing.
        again = batch(parse, log, output, resume=True, progress=False)
        print(f"\nresumed: {again.skipped:,} inputs already done, {again.done} run again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
