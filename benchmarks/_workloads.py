"""The workloads: what each one measures, and why.

Each `measure` function runs in a child process of its own (see `_child`),
opens one pool with the library's defaults, warms it up, and returns one
sample per repetition; the report shows their median. Workloads with a
`floor` also run the hand-written floor of `_floor`.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._floor import Floor
from benchmarks._libraries import Library
from benchmarks._settings import Settings
from benchmarks._tasks import echo, spin, tiny

Call = Callable[[Callable[[Any], Any], Any], Any]  # runs fn(arg) in a worker, returns the result
WARM_UP = 100  # tiny tasks before any timing: workers started, functions loaded
GROWTH = 4  # from one trial map to the next, to size a library's map (see _map_size)


@dataclass
class Measured:
    """Samples per metric (one per repetition), and what the reader should know."""

    metrics: dict[str, list[float]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "notes": self.notes}


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric of a workload."""

    metric: str
    unit: str
    higher_is_better: bool
    label: Callable[[Settings], str]


@dataclass(frozen=True)
class Workload:
    name: str
    rows: tuple[Row, ...]
    measure: Callable[[Library, Settings], Measured]
    floor: Callable[[Settings], Measured] | None = None
    process_per_sample: bool = False  # each sample needs a fresh process


def _drain(results: Iterable[Any]) -> int:
    return sum(1 for _ in results)


def _round_trips(call: Call, settings: Settings) -> Measured:
    for i in range(WARM_UP):
        call(tiny, i)
    medians = []
    for _ in range(settings.repeat):
        samples = []
        for i in range(settings.round_trips):
            start = time.perf_counter()
            call(tiny, i)
            samples.append(time.perf_counter() - start)
        medians.append(1e6 * statistics.median(samples))
    return Measured({"round_trip": medians})


def round_trip(library: Library, settings: Settings) -> Measured:
    """Latency of one tiny task submitted and awaited before the next (µs).

    What a caller that needs each result before going on pays per task:
    pickling, the trip to a worker and back, and the library's bookkeeping,
    with nothing to spread them over. The median of the per-task times.
    """
    library.open(settings.workers)
    try:
        return _round_trips(lambda fn, arg: library.submit(fn, arg)(), settings)
    finally:
        library.close()


def round_trip_floor(settings: Settings) -> Measured:
    floor = Floor(settings.workers)
    try:
        return _round_trips(floor.call, settings)
    finally:
        floor.close()


def submitted(library: Library, settings: Settings) -> Measured:
    """Tiny tasks submitted all at once as futures, then awaited in order (tasks/s).

    The per-task cost of the library's futures API when tasks queue up: how
    fast it takes work in, hands it to workers and settles the futures.
    """
    library.open(settings.workers)
    try:
        for wait in [library.submit(tiny, i) for i in range(WARM_UP)]:
            wait()
        rates = []
        for _ in range(settings.repeat):
            start = time.perf_counter()
            waiters = [library.submit(tiny, i) for i in range(settings.submitted)]
            for wait in waiters:
                wait()
            rates.append(settings.submitted / (time.perf_counter() - start))
        return Measured({"submitted": rates})
    finally:
        library.close()


def _map_size(run: Callable[[int], float], settings: Settings) -> tuple[int, str | None]:
    """How many items each timed `map` can take within the budget, and why if fewer.

    After a warm-up map, maps of 1,000, 4,000, 16,000, ... items until (from
    the second on) one takes a twentieth of the budget or the next would be
    the full size. A line through the last two (a cost per call plus a cost
    per item) says whether `repeat` maps of the full size fit in the budget.
    """
    wanted, budget = settings.map_items, settings.map_budget
    run(min(100, wanted))
    points = [(size := min(1_000, wanted), run(size))]
    while size * GROWTH < wanted and (len(points) < 2 or points[-1][1] < budget / 20):
        size *= GROWTH
        points.append((size, run(size)))
    per_item = points[-1][1] / size
    per_call = 0.0
    if len(points) > 1:
        (small, short), (large, long) = points[-2:]
        if long > short:
            per_item = (long - short) / (large - small)
            per_call = max(0.0, short - per_item * small)
    if (per_call + per_item * wanted) * settings.repeat <= budget:
        return wanted, None
    fits = max(points[0][0], int((budget / settings.repeat - per_call) / per_item))
    fits = int(float(f"{fits:.2g}"))  # two significant digits
    if fits >= wanted:  # a cost per call, not per item: fewer items would not help
        return wanted, None
    why = (
        f"map measured on {fits:,} items, not {wanted:,}: with its default settings "
        f"{wanted:,} would take about {per_call + wanted * per_item:.0f} s"
    )
    return fits, why


def mapped(library: Library, settings: Settings) -> Measured:
    """`map` of a tiny function over many items, with default settings (items/s).

    Throughput of the most common bulk call as users write it, so the
    library's default chunking is part of the figure. A default that would
    not finish in the time budget (chunks of one item) is measured on fewer
    items, with a note.
    """
    library.open(settings.workers)
    try:

        def run(size: int) -> float:
            start = time.perf_counter()
            count = _drain(library.map(tiny, range(size)))
            elapsed = time.perf_counter() - start
            if count != size:
                raise RuntimeError(f"map returned {count} results for {size} items")
            return elapsed

        size, why = _map_size(run, settings)
        rates = [size / run(size) for _ in range(settings.repeat)]
        return Measured({"mapped": rates}, [why] if why else [])
    finally:
        library.close()


def mapped_floor(settings: Settings) -> Measured:
    floor = Floor(settings.workers)
    try:
        items = range(settings.map_items)
        floor.map(tiny, items[: settings.floor_chunk * 10], settings.floor_chunk)
        rates = []
        for _ in range(settings.repeat):
            start = time.perf_counter()
            floor.map(tiny, items, settings.floor_chunk)
            rates.append(settings.map_items / (time.perf_counter() - start))
        return Measured({"mapped": rates})
    finally:
        floor.close()


def speedup(library: Library, settings: Settings) -> Measured:
    """CPU-bound pure-Python tasks on N workers against 1 (speed-up, ideal N).

    Whether the library keeps every worker busy on real work: chunking that
    leaves one worker idle at the end, or dispatch overhead, shows here.
    Each repetition times `map` over the tasks (default settings) on a warm
    pool of one worker, then on a warm pool of N, and divides: the two are
    close in time, so a burst of load from elsewhere spoils one sample only.
    """
    tasks = [settings.spin_iterations] * settings.cpu_tasks
    ratios = []
    for _ in range(settings.repeat):
        times = []
        for workers in (1, settings.workers):
            library.open(workers)
            try:
                _drain(library.map(spin, [settings.spin_iterations // 10] * 2 * workers))
                start = time.perf_counter()
                _drain(library.map(spin, tasks))
                times.append(time.perf_counter() - start)
            finally:
                library.close()
        ratios.append(times[0] / times[1])
    return Measured({"speedup": ratios})


def _numpy() -> bool:
    return importlib.util.find_spec("numpy") is not None


def _payload(size: int) -> Any:
    if not _numpy():
        return b"\x07" * size
    import numpy

    return numpy.full(size, 7, dtype=numpy.uint8)


def transfer(library: Library, settings: Settings) -> Measured:
    """A large buffer sent to a worker and returned (GiB/s, both directions counted).

    The cost of moving data: pickling, copies and the pipe. A numpy array
    when numpy is installed (libraries may send its buffer out of band),
    else bytes.
    """
    payload = _payload(settings.payload_bytes)
    library.open(settings.workers)
    try:
        # Warmed up with small payloads of the same type, given out to the
        # workers together: a worker's first array imports numpy, 0.1-0.5 s
        # that is not moving data, which halved the median of a quick run.
        warm_ups = [library.submit(echo, payload[:1]) for _ in range(2 * settings.workers)]
        for result in warm_ups:
            result()
        rates = []
        for _ in range(settings.repeat):
            start = time.perf_counter()
            result = library.submit(echo, payload)()
            elapsed = time.perf_counter() - start
            if len(result) != settings.payload_bytes:
                raise RuntimeError(f"sent {settings.payload_bytes} bytes, got {len(result)} back")
            rates.append(2 * settings.payload_bytes / elapsed / 2**30)
        return Measured({"transfer": rates})
    finally:
        library.close()


def startup(library: Library, settings: Settings) -> Measured:
    """A fresh pool's first result, and its shutdown after that task (ms).

    What a script that makes a pool for one job pays on top of the job, with
    each library's default start method. Run once per fresh process, so a
    forkserver or a reusable executor is started from nothing every time.
    """
    start = time.perf_counter()
    library.open(settings.workers)
    library.submit(tiny, 0)()
    first = time.perf_counter()
    library.close()
    done = time.perf_counter()
    return Measured({"first_result": [1e3 * (first - start)], "shutdown": [1e3 * (done - first)]})


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _kind() -> str:
    return "numpy array" if _numpy() else "bytes"


WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in (
        Workload(
            "roundtrip",
            (Row("round_trip", "µs", False, lambda s: "round trip, one tiny task at a time"),),
            round_trip,
            floor=round_trip_floor,
        ),
        Workload(
            "submit",
            (Row("submitted", "tasks/s", True, lambda s: f"{s.submitted:,} tiny tasks as futures"),),
            submitted,
        ),
        Workload(
            "map",
            (Row("mapped", "items/s", True, lambda s: f"map over {s.map_items:,} tiny items"),),
            mapped,
            floor=mapped_floor,
        ),
        Workload(
            "speedup",
            (
                Row(
                    "speedup",
                    "x",
                    True,
                    lambda s: (
                        f"{s.cpu_tasks} x {1e3 * s.cpu_task_seconds:g} ms CPU, {s.workers} workers vs 1"
                    ),
                ),
            ),
            speedup,
        ),
        Workload(
            "transfer",
            (Row("transfer", "GiB/s", True, lambda s: f"{_mib(s.payload_bytes)} {_kind()} there and back"),),
            transfer,
        ),
        Workload(
            "startup",
            (
                Row("first_result", "ms", False, lambda s: "fresh pool to first result"),
                Row("shutdown", "ms", False, lambda s: "shutdown after one task"),
            ),
            startup,
            process_per_sample=True,
        ),
    )
}
