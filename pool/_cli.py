"""The ``pool`` command (also ``python -m pool``).

    pool run MODULE:FUNCTION INPUT [-o OUTPUT] [--workers N] [--timeout S]
             [--retries N] [--resume] [--ordered] [--chunk N] [--format F]

Exit status: 0 when every input has a result, 1 when some failed, 2 for a
usage error (a bad MODULE:FUNCTION, an unreadable input, a journal of
another job), 130 when interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from ._inputs import FORMATS
from ._journal import JournalMismatch

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the command line, said in one line."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "run":  # pragma: no cover  # argparse requires a command
        parser.error("choose a command: run")
    try:
        return _run(args)
    except UsageError as exc:
        print(f"pool: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pool", description="Run Python functions over many inputs in worker processes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run MODULE:FUNCTION over each input of a file",
        description=(
            "Run MODULE:FUNCTION over each input of INPUT in worker processes. Each result is a "
            'JSON record {"line": N, "input": ..., "result": ...} in OUTPUT; each failure a record '
            '{"line": N, "input": ..., "error": {...}} in the errors file. A journal next to OUTPUT '
            "makes the job resumable with --resume after a crash, a kill or Ctrl-C."
        ),
    )
    run.add_argument("function", metavar="MODULE:FUNCTION", help="the function, e.g. mypackage.jobs:score")
    run.add_argument(
        "input",
        metavar="INPUT",
        help='JSON Lines (a value, or {"args": [...], "kwargs": {...}} per line), CSV (columns as '
        "keyword arguments) or text (one string per line); - for standard input",
    )
    run.add_argument("-o", "--output", help="results, JSON Lines (default: INPUT's name + .results.jsonl)")
    run.add_argument("--errors", help="failures, JSON Lines (default: OUTPUT with .errors.jsonl)")
    run.add_argument("--workers", type=int, help="worker processes (default: the CPUs)")
    run.add_argument("--timeout", type=float, help="seconds one input may run")
    run.add_argument("--retries", type=int, default=0, help="re-runs of an input whose worker died")
    run.add_argument("--resume", action="store_true", help="skip the inputs an earlier run finished")
    run.add_argument("--ordered", action="store_true", help="write results in input order")
    run.add_argument(
        "--chunk", type=int, metavar="N", help="inputs sent to a worker at once (default: automatic)"
    )
    run.add_argument("--format", choices=FORMATS, help="the input format (default: from the extension)")
    run.add_argument(
        "--sync-every",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between commits of the output to disk and journal (default 1)",
    )
    run.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress lines when standard error is not a terminal (default 10)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return parser


def _run(args: argparse.Namespace) -> int:
    from ._batch import execute

    fn = load_function(args.function)
    output = args.output or _default_output(args.input)
    try:
        result = execute(
            fn,
            args.input,
            output,
            errors=args.errors,
            workers=args.workers,
            timeout=args.timeout,
            retries=args.retries,
            resume=args.resume,
            ordered=args.ordered,
            chunksize=args.chunk,
            format=args.format,
            progress=not args.no_progress,
            progress_every=args.progress_every,
            sync_every=args.sync_every,
        )
    except (OSError, JournalMismatch, ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    print(result.summary(), file=sys.stderr)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


def load_function(spec: str) -> Callable[..., Any]:
    """``module:function`` (the function may be dotted: ``module:Class.method``), imported."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise UsageError(f"expected MODULE:FUNCTION, e.g. mypackage.jobs:score; got {spec!r}")
    # As `python -m` does: modules in the current directory can be named.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  # the module itself raised (even SystemExit) on import
        raise UsageError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no {qualname!r}") from None
    if not callable(target):
        raise UsageError(f"{spec} is not callable: it is a {type(target).__qualname__}")
    return target  # type: ignore[no-any-return]


def _default_output(input_path: str) -> str:
    if input_path == "-":
        return "results.jsonl"
    base, _ = os.path.splitext(input_path)
    return base + ".results.jsonl"
