"""A 3-stage pipeline of tiny items: pool.Pipeline against its peers, in one run.

    python benchmarks/pipeline.py [--quick] [--items N] [--timeout S]

Contenders: pool.Pipeline, a hand-written chain of processes linked by
Pipes sending batches of 1,000 items (the floor), three multiprocessing.Pool
objects chained through ``imap``, pypeln and mpipe (the last two with
``pip install -e ".[bench]"``). Each stage is ``x + 1``, ``2 * x``, ``x + 1``
with one worker process; the items must come out in source order.

Each run is a fresh process, killed with all it started past --timeout.
A contender too slow for the full item count within its budget is measured
on fewer items (noted). Printed: items/s over the whole run and after the
first item (start-up left out: pool starts its workers with the forkserver,
the hand-written chain with fork), medians of the repetitions, and pool's
ratio to each contender.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._isolate import compile_sources, run
from benchmarks._pipelines import CONTENDERS, LABELS

OPTIONAL = {"pypeln": "pypeln", "mpipe": "mpipe"}
BUDGET = 2.0  # seconds one run of a slow contender may take when sizing it
SMALLEST = 2_000


def measure(name: str, items: int, timeout: float) -> tuple[float, float, str]:
    """Seconds for ``items`` items, and to the first, in a fresh process; or raise with the reason."""
    outcome = run([sys.executable, "-m", "benchmarks._pipelines", name, str(items)], timeout)
    if outcome.status != "ok" or outcome.result is None:
        raise RuntimeError(f"{outcome.status}: {outcome.detail or 'no result'}")
    note = f"left {outcome.leftovers} process(es) behind" if outcome.leftovers else ""
    return float(outcome.result["seconds"]), float(outcome.result["first"]), note


def size_for(name: str, items: int, timeout: float) -> int:
    """The full count, or fewer for a contender that would take longer than BUDGET."""
    trial = SMALLEST
    while trial < items:
        seconds, _, _ = measure(name, trial, timeout)
        if seconds * items / trial <= BUDGET * 4:
            return items
        if seconds * 4 > BUDGET:
            return trial
        trial *= 4
    return items


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer items and repetitions")
    parser.add_argument("--items", type=int, help="items per run (default 1,000,000; quick 100,000)")
    parser.add_argument("--repeat", type=int, help="runs per contender (default 5; quick 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run (default 120)")
    args = parser.parse_args(argv)
    compile_sources()
    items = args.items or (100_000 if args.quick else 1_000_000)
    repeat = args.repeat or (2 if args.quick else 5)

    rates: dict[str, float] = {}
    steady: dict[str, float] = {}
    rows = []
    for name in CONTENDERS:
        module = OPTIONAL.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            rows.append((name, None, "not installed"))
            continue
        try:
            count = size_for(name, items, args.timeout)
            samples, after_first, notes = [], [], set()
            for _ in range(repeat):
                seconds, first, note = measure(name, count, args.timeout)
                samples.append(count / seconds)
                after_first.append((count - 1) / (seconds - first))
                if note:
                    notes.add(note)
        except RuntimeError as exc:
            rows.append((name, None, str(exc)))
            continue
        rates[name] = statistics.median(samples)
        steady[name] = statistics.median(after_first)
        if count != items:
            notes.add(f"on {count:,} items")
        rows.append((name, rates[name], "; ".join(sorted(notes))))
        print(f"{name:<8} {rates[name]:>14,.0f} items/s", file=sys.stderr, flush=True)

    print(f"3-stage pipeline of tiny items, one worker per stage, {items:,} items, median of {repeat}")
    print("whole run: start, every item, stop; after the first item: start-up left out")
    print(f"{'contender':<50} {'whole run':>12} {'pool / it':>9} {'after first':>12} {'pool / it':>9}  notes")
    for name, _, note in rows:
        cells = []
        for table in (rates, steady):
            figure = table.get(name)
            ours = table.get("pool")
            cells.append(f"{figure:>12,.0f}" if figure is not None else f"{'-':>12}")
            cells.append(f"{ours / figure:>8.2f}x" if ours and figure else f"{'':>9}")
        print(f"{LABELS[name]:<50} {' '.join(cells)}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
