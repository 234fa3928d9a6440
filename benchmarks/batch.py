"""``pool run`` over a file of tiny inputs against the hand-written equivalent, in one run.

    python benchmarks/batch.py [--items N] [--repeat N]

Both read the same JSON Lines file of integers, call ``x + 1`` on each in
worker processes (all CPUs) and write one JSON record per input. The
hand-written script (``benchmarks/_batch_job.py``) uses
``multiprocessing.Pool.imap_unordered`` with chunks of 1,000 and does
nothing else; the command also commits its output through the journal
every second and can resume. Each is timed as a whole process, start-up
included, median of the repetitions. Target: the command within 1.5x of
the script.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._isolate import ROOT, compile_sources


def timed(command: list[str], timeout: float) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    compile_sources()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "inputs.jsonl"
        source.write_text("".join(f"{i}\n" for i in range(args.items)))
        commands = {
            "pool run": [
                sys.executable,
                "-m",
                "pool",
                "run",
                "benchmarks._batch_job:inc",
                str(source),
                "-o",
                str(Path(tmp) / "pool.jsonl"),
                "--no-progress",
            ],
            "multiprocessing.Pool script": [
                sys.executable,
                "-m",
                "benchmarks._batch_job",
                str(source),
                str(Path(tmp) / "mp.jsonl"),
            ],
        }
        seconds: dict[str, float] = {}
        for name, command in commands.items():
            samples = [timed(command, args.timeout) for _ in range(args.repeat)]
            seconds[name] = statistics.median(samples)
            print(f"{name:<28} {seconds[name]:.2f} s", file=sys.stderr, flush=True)
        for name in commands:
            lines = sum(1 for _ in (Path(tmp) / ("pool.jsonl" if name == "pool run" else "mp.jsonl")).open())
            if lines != args.items:
                raise SystemExit(f"{name} wrote {lines} records for {args.items} inputs")
    ours, theirs = seconds["pool run"], seconds["multiprocessing.Pool script"]
    print(f"{args.items:,} tiny inputs, whole process, median of {args.repeat}")
    print(f"{'pool run':<28} {ours:>7.2f} s  {args.items / ours:>12,.0f} inputs/s")
    print(f"{'multiprocessing.Pool script':<28} {theirs:>7.2f} s  {args.items / theirs:>12,.0f} inputs/s")
    print(f"overhead of the command: {ours / theirs:.2f}x the script's time (target: within 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
