"""pool against concurrent.futures.ProcessPoolExecutor, measured side by side.

    python benchmarks/compare_executor.py [--workers 2] [--repeat 5]

Each figure is the median of ``--repeat`` runs, both executors measured in
the same run, with the same start method (forkserver where there is one, the
safe default of both on Linux from Python 3.14) and, separately, with each
executor's own default. Ratios above 1.0 mean pool is faster.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pool import Pool  # the checkout, not an installed copy


def tiny(x: int) -> int:
    return x + 1


Factory = Callable[[], Executor]


def first_result(make: Factory) -> float:
    start = time.perf_counter()
    executor = make()
    executor.submit(tiny, 1).result()
    elapsed = time.perf_counter() - start
    executor.shutdown()
    return elapsed


def shutdown_time(make: Factory) -> float:
    executor = make()
    list(executor.map(tiny, range(100)))
    start = time.perf_counter()
    executor.shutdown()
    return time.perf_counter() - start


def round_trip(executor: Executor, n: int = 2000) -> float:
    """Seconds per task, one at a time."""
    samples = []
    for i in range(n):
        start = time.perf_counter()
        executor.submit(tiny, i).result()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def submitted(executor: Executor, n: int = 20_000) -> float:
    """Tasks per second, all submitted, then awaited."""
    start = time.perf_counter()
    futures = [executor.submit(tiny, i) for i in range(n)]
    for future in futures:
        future.result()
    return n / (time.perf_counter() - start)


def mapped(executor: Executor, n: int) -> float:
    """Items per second through map with default settings."""
    start = time.perf_counter()
    for _ in executor.map(tiny, range(n)):
        pass
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    workers, repeat = args.workers, args.repeat
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    makers: dict[str, Factory] = {
        "pool": lambda: Pool(workers, mp_context=ctx),
        "ProcessPoolExecutor": lambda: ProcessPoolExecutor(workers, mp_context=ctx),
    }
    defaults: dict[str, Factory] = {
        "pool": lambda: Pool(workers),
        "ProcessPoolExecutor": lambda: ProcessPoolExecutor(workers),
    }

    def median(fn: Callable[[], float]) -> float:
        return statistics.median(fn() for _ in range(repeat))

    rows: list[tuple[str, str, dict[str, float], bool]] = []
    rows.append(
        (
            "fresh pool to first result, own default method",
            "ms",
            {k: 1e3 * median(lambda m=m: first_result(m)) for k, m in defaults.items()},
            False,
        )
    )
    rows.append(
        (
            f"fresh pool to first result, {method}",
            "ms",
            {k: 1e3 * median(lambda m=m: first_result(m)) for k, m in makers.items()},
            False,
        )
    )
    rows.append(
        (
            "shutdown of a warm pool",
            "ms",
            {k: 1e3 * median(lambda m=m: shutdown_time(m)) for k, m in makers.items()},
            False,
        )
    )
    steady: dict[str, dict[str, float]] = {}
    for name, make in makers.items():
        executor = make()
        list(executor.map(tiny, range(1000)))  # warm
        steady[name] = {
            "rt": 1e6 * median(lambda e=executor: round_trip(e)),
            "sub": median(lambda e=executor: submitted(e)),
            "map": median(lambda e=executor: mapped(e, 100_000)),
        }
        executor.shutdown()
    rows.append(("round trip of one tiny task", "µs", {k: v["rt"] for k, v in steady.items()}, False))
    rows.append(
        (
            "20,000 tiny tasks submitted, then awaited",
            "tasks/s",
            {k: v["sub"] for k, v in steady.items()},
            True,
        )
    )
    rows.append(
        (
            "map over 100,000 tiny items, default chunksize",
            "items/s",
            {k: v["map"] for k, v in steady.items()},
            True,
        )
    )

    print(f"{workers} workers, median of {repeat}, Python {sys.version.split()[0]}")
    print(f"{'workload':<50} {'unit':>8} {'pool':>12} {'PPE':>12} {'ratio':>7}")
    for label, unit, figures, higher_is_better in rows:
        ours, theirs = figures["pool"], figures["ProcessPoolExecutor"]
        ratio = ours / theirs if higher_is_better else theirs / ours
        print(f"{label:<50} {unit:>8} {ours:>12,.1f} {theirs:>12,.1f} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
