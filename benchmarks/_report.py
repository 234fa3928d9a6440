"""The results of a run: one table for people, one JSON file for programs."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._settings import Settings
from benchmarks._workloads import Row, Workload

FLOOR = "floor"
SPREAD = 0.25  # repetitions further apart than this, relative to the median, get a "~"
BUSY = 20.0  # per cent of all CPUs busy before the run that gets a warning


@dataclass
class Result:
    """One (library, workload) measurement, as the run saw it."""

    library: str
    workload: str
    status: str  # "ok", "timeout", "error" or "not installed"
    metrics: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def value(self, metric: str) -> float | None:
        samples = self.metrics.get(metric)
        return statistics.median(samples) if self.status == "ok" and samples else None

    def spread(self, metric: str) -> bool:
        samples = self.metrics.get(metric, [])
        middle = self.value(metric)
        if not middle or len(samples) < 2:
            return False
        return (max(samples) - min(samples)) / middle > SPREAD


def number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(result: Result | None, row: Row) -> str:
    if result is None:
        return ""
    value = result.value(row.metric)
    if value is None:
        return result.status if result.status != "ok" else "—"
    marks = ("*" if result.notes else "") + ("~" if result.spread(row.metric) else "")
    return number(value) + marks


def _ratio(pool: Result | None, peers: list[Result], row: Row) -> str:
    ours = pool.value(row.metric) if pool else None
    theirs = [v for v in (peer.value(row.metric) for peer in peers) if v is not None]
    if ours is None or not theirs or ours <= 0:
        return "—"
    best = max(theirs) if row.higher_is_better else min(theirs)
    return f"{(ours / best if row.higher_is_better else best / ours):.2f}x"


def table(
    results: list[Result], workloads: list[Workload], columns: list[tuple[str, str]], settings: Settings
) -> str:
    """Rows are the workloads' metrics; ``columns`` are (library key, heading), pool first."""
    by_key = {(r.library, r.workload): r for r in results}
    headings = ["workload", "unit"] + [heading for _, heading in columns] + ["pool / best peer", FLOOR]
    lines: list[list[str]] = []
    for workload in workloads:
        for row in workload.rows:
            cells = [_cell(by_key.get((key, workload.name)), row) for key, _ in columns]
            peers = [by_key[key, workload.name] for key, _ in columns[1:] if (key, workload.name) in by_key]
            floor = _cell(by_key.get((FLOOR, workload.name)), row)
            ratio = _ratio(by_key.get((columns[0][0], workload.name)), peers, row)
            lines.append([row.label(settings), row.unit, *cells, ratio, floor])
    widths = [max(len(line[i]) for line in [headings, *lines]) for i in range(len(headings))]

    def render(line: list[str]) -> str:
        cells = [cell.rjust(width) for cell, width in zip(line, widths, strict=True)]
        return "  ".join([line[0].ljust(widths[0]), *cells[1:]])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(headings), rule, *(render(line) for line in lines)])


def _header(meta: dict[str, Any], settings: Settings) -> list[str]:
    lines = [
        f"{meta['mode']} run, {settings.workers} workers, median of {settings.repeat} "
        f"(start-up: {settings.starts} fresh processes), {meta['timeout']:g} s limit per measurement, "
        f"{meta['seconds']:.0f} s in all",
        f"pool {meta['pool']} at {meta['revision']}, Python {meta['python']}, {meta['cpus']} CPUs, "
        f"{meta['cpu_busy_before']:.0f}% busy in the second before the run",
    ]
    if meta["cpu_busy_before"] > BUSY:
        lines.append("the machine was busy before the run: figures may be off, speed-up the most")
    return lines


def _legend(meta: dict[str, Any], labels: dict[str, str], results: list[Result]) -> list[str]:
    methods = ", ".join(f"{labels[key]} {method}" for key, method in meta["start_methods"].items())
    versions = ", ".join(f"{labels[key]} {version}" for key, version in meta["versions"].items())
    lines = [
        "pool / best peer: > 1 means pool does better (lower µs and ms, higher everything else).",
        "PPE: concurrent.futures.ProcessPoolExecutor; mp.Pool: multiprocessing.Pool.",
        "floor: hand-written, one Pipe per worker process, no bookkeeping; map in chunks of "
        f"{meta['settings']['floor_chunk']:,}.",
        f"start methods: {methods}.",
        *([f"versions: {versions}."] if versions else []),
        f"~ repetitions spread over more than {SPREAD:.0%} of the median; * see the notes below.",
    ]
    if meta["missing"]:
        names = ", ".join(labels[key] for key in meta["missing"])
        lines.append(f'not installed: {names} (pip install -e ".[bench]")')
    lines += [
        f"  * {result.workload}, {labels.get(result.library, result.library)}: {note}"
        for result in results
        for note in result.notes
    ]
    return lines


def report(
    meta: dict[str, Any],
    results: list[Result],
    workloads: list[Workload],
    columns: list[tuple[str, str]],
    settings: Settings,
) -> str:
    """The header, the table, the legend and the notes."""
    labels = dict(columns)
    return "\n".join(
        [
            *_header(meta, settings),
            "",
            table(results, workloads, columns, settings),
            "",
            *_legend(meta, labels, results),
        ]
    )


def write_json(path: Path, meta: dict[str, Any], results: list[Result]) -> None:
    document = {"meta": meta, "results": [asdict(result) for result in results]}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
