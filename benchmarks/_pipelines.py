"""The pipeline contenders, one per function: three stages of tiny functions.

``python -m benchmarks._pipelines NAME ITEMS`` runs one contender over
``range(ITEMS)`` and prints ``{"seconds": ..., "first": ..., "items": ...}``:
the whole run, with the pipeline built, run and torn down inside the
timing (a pipeline is made for each run), and the time to the first item.
Every contender gets one worker process per stage and must yield the items
in source order.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from benchmarks._tasks import tiny

BATCH = 1_000  # items per message of the hand-written chain, as in the classic recipe


def double(x: int) -> int:
    return 2 * x


STAGES: tuple[Callable[[int], int], ...] = (tiny, double, tiny)


def expected(items: int) -> Iterator[int]:
    for x in range(items):
        yield tiny(double(tiny(x)))


def run_pool(items: int) -> Iterator[int]:
    from pool import Pipeline

    pipe: Pipeline[int] = Pipeline(range(items))
    for fn in STAGES:
        pipe = pipe.map(fn)
    return iter(pipe)


def run_mp_imap(items: int) -> Iterator[int]:
    """Three multiprocessing.Pool objects chained through imap, chunks of BATCH."""
    pools = [multiprocessing.Pool(1) for _ in STAGES]
    try:
        stream: Any = range(items)
        for p, fn in zip(pools, STAGES):  # noqa: B905
            stream = p.imap(fn, stream, chunksize=BATCH)
        yield from stream
    finally:
        for p in pools:
            p.terminate()
            p.join()


def _chain_stage(fn: Callable[[int], int], inbox: Connection, outbox: Connection) -> None:
    while True:
        batch = inbox.recv()
        if batch is None:
            outbox.send(None)
            return
        outbox.send([fn(x) for x in batch])


def run_chain(items: int) -> Iterator[int]:
    """Hand-written: one process per stage, linked by Pipes, batches of BATCH, a None to end."""
    ends = [multiprocessing.Pipe(duplex=False) for _ in range(len(STAGES) + 1)]
    processes = [
        multiprocessing.Process(target=_chain_stage, args=(fn, ends[i][0], ends[i + 1][1]))
        for i, fn in enumerate(STAGES)
    ]
    for process in processes:
        process.start()
    first = ends[0][1]

    def feed() -> None:
        for start in range(0, items, BATCH):
            first.send(list(range(start, min(items, start + BATCH))))
        first.send(None)

    feeder = threading.Thread(target=feed)
    feeder.start()
    last = ends[-1][0]
    while (batch := last.recv()) is not None:
        yield from batch
    feeder.join()
    for process in processes:
        process.join()


def run_pypeln(items: int) -> Iterator[int]:
    import pypeln as pl  # type: ignore[import-untyped]

    stage: Any = range(items)
    for fn in STAGES:
        stage = pl.process.map(fn, stage, workers=1, maxsize=BATCH)
    return iter(stage)


def run_mpipe(items: int) -> Iterator[int]:
    import mpipe  # type: ignore[import-untyped]

    stages = [mpipe.OrderedStage(fn, 1) for fn in STAGES]
    for upstream, downstream in itertools.pairwise(stages):
        upstream.link(downstream)
    pipe = mpipe.Pipeline(stages[0])

    def feed() -> None:
        for x in range(items):
            pipe.put(x)
        pipe.put(None)

    feeder = threading.Thread(target=feed)
    feeder.start()
    yield from pipe.results()
    feeder.join()


CONTENDERS: dict[str, Callable[[int], Iterator[int]]] = {
    "pool": run_pool,
    "chain": run_chain,
    "mp-imap": run_mp_imap,
    "pypeln": run_pypeln,
    "mpipe": run_mpipe,
}

LABELS = {
    "pool": "pool.Pipeline",
    "chain": f"hand-written Pipe chain (batches of {BATCH})",
    "mp-imap": f"multiprocessing.Pool imap chain (chunksize {BATCH})",
    "pypeln": "pypeln.process",
    "mpipe": "mpipe",
}


def main(argv: list[str]) -> int:
    name, items = argv[1], int(argv[2])
    start = time.perf_counter()
    results = CONTENDERS[name](items)
    got = [next(results)]
    first = time.perf_counter() - start
    got.extend(results)
    seconds = time.perf_counter() - start
    if got != list(expected(items)):  # checked after the clock stopped
        raise AssertionError(f"{name}: wrong or missing items ({len(got)} of {items})")
    print(json.dumps({"seconds": seconds, "first": first, "items": items}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
