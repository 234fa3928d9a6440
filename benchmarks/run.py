"""pool against its peers, every workload in one run: a table and a JSON file.

    python benchmarks/run.py [--quick] [--only WORKLOAD] [--peers a,b,c] [--timeout S] [--json PATH]

Peers: ProcessPoolExecutor (ppe), multiprocessing.Pool (mp), loky, pebble,
mpire; the last three come with ``pip install -e ".[bench]"`` and are
reported as "not installed" without it. Each (library, workload) runs in a
fresh process, killed with everything it started if it takes longer than
--timeout, and reported as "timeout". Figures are medians over repetitions;
"pool / best peer" is above 1 where pool does better than every peer.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._isolate import ROOT, compile_sources, run_child
from benchmarks._libraries import LIBRARIES, PEERS
from benchmarks._report import FLOOR, Result, number, report, write_json
from benchmarks._settings import DEFAULT_TIMEOUT, FULL, QUICK, Settings, calibrate
from benchmarks._workloads import WORKLOADS, Workload

ALIASES = {"processpoolexecutor": "ppe", "multiprocessing": "mp", "multiprocessing.pool": "mp"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes (~1 min)")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(WORKLOADS),
        metavar="WORKLOAD",
        help=f"run this workload only (repeatable): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated peers (default: {','.join(PEERS)})"
    )
    parser.add_argument("--timeout", type=float, help="seconds per measurement (default 60, quick 15)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    peers = [ALIASES.get(name.strip().lower(), name.strip().lower()) for name in args.peers.split(",")]
    unknown = [name for name in peers if name and name not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    args.peers = [name for name in PEERS if name in peers]
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT[args.quick]
    return args


def measure(library: str, workload: Workload, settings: Settings, timeout: float) -> Result:
    """One (library, workload) cell, from one fresh process or, for start-up, several."""
    runs = settings.starts if workload.process_per_sample else 1
    result = Result(library, workload.name, "ok")
    spec = {"library": library, "workload": workload.name, "settings": settings.to_json()}
    for _ in range(runs):
        outcome = run_child(spec, timeout)
        result.seconds += outcome.seconds
        if outcome.status != "ok" or outcome.result is None:
            result.status = outcome.status
            result.notes.append(f"{outcome.status}: {outcome.detail or f'no result within {timeout:g} s'}")
            return result
        for metric, samples in outcome.result["metrics"].items():
            result.metrics.setdefault(metric, []).extend(samples)
        result.notes.extend(note for note in outcome.result["notes"] if note not in result.notes)
        if outcome.leftovers:
            result.notes.append(f"left {outcome.leftovers} process(es) running after it exited; killed")
        if outcome.hung_at_exit:
            result.notes.append(f"did not exit within {timeout:g} s after its result; killed")
    return result


def progress(result: Result, workload: Workload) -> str:
    values = [(row, result.value(row.metric)) for row in workload.rows]
    figures = ", ".join(f"{number(value)} {row.unit}" for row, value in values if value is not None)
    return f"{workload.name:<10} {result.library:<7} {figures or result.status}  ({result.seconds:.1f} s)"


def revision() -> str:
    try:
        described = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip()


def main(argv: list[str]) -> int:
    args = parse(argv)
    compile_sources()
    settings = calibrate(QUICK if args.quick else FULL)
    workloads = [WORKLOADS[name] for name in WORKLOADS if not args.only or name in args.only]
    libraries = ["pool", *args.peers]
    missing = [key for key in libraries if not LIBRARIES[key].installed()]
    busy_before = psutil.cpu_percent(interval=1.0)  # anything else running now skews every figure
    load_before = os.getloadavg()
    started = time.perf_counter()

    results: list[Result] = []
    for workload in workloads:
        for key in libraries + ([FLOOR] if workload.floor else []):
            if key in missing:
                results.append(Result(key, workload.name, "not installed"))
                continue
            result = measure(key, workload, settings, args.timeout)
            print(progress(result, workload), file=sys.stderr, flush=True)
            results.append(result)

    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started
    columns = [(key, LIBRARIES[key].label) for key in libraries]
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "settings": settings.to_json(),
        "timeout": args.timeout,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pool": LIBRARIES["pool"].version(),
        "revision": revision(),
        "versions": {
            key: LIBRARIES[key].version()
            for key in args.peers
            if key not in missing and LIBRARIES[key].optional
        },
        "start_methods": {key: LIBRARIES[key].start_method() for key in libraries if key not in missing},
        "missing": missing,
        "cpu_busy_before": busy_before,
        "load_average": {"before": load_before, "after": load_after},
        "seconds": elapsed,
    }
    print(report(meta, results, workloads, columns, settings))
    if args.json:
        write_json(args.json, meta, results)
        print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
