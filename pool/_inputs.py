"""A batch job's inputs: read in the caller's process, parsed in the workers.

The caller only cuts the input into items, ``(line, raw)``: the line number
(counting the file's lines from 1) and the line's text (a CSV row's fields,
an iterable's value). Parsing JSON, building the call and writing the record
happen in the worker (`run_input`), in parallel: done in the caller, they
cost more than the pool's whole dispatch. A line already known to be bad
(a CSV row with the wrong number of fields) travels as ``(line, raw,
problem)`` and fails alone, with its line number, as a line that does not
parse as JSON does in the worker.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

FORMATS = ("jsonl", "csv", "text")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}

Item = tuple[Any, ...]  # (line, raw) or (line, raw, problem)


class InputError(ValueError):
    """An input line that cannot be turned into a call."""


def format_of(path: str, given: str | None) -> str:
    """The input format: as given, else from the file's extension (text by default)."""
    if given is not None:
        if given not in FORMATS:
            raise ValueError(f"unknown input format {given!r}; choose from {', '.join(FORMATS)}")
        return given
    if path == "-":
        return "text"
    return _EXTENSIONS.get(os.path.splitext(path)[1].lower(), "text")


def open_input(path: str) -> IO[str]:
    """The input file, or standard input for ``-``; an OSError names the path."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_items(stream: IO[str], fmt: str) -> tuple[Iterator[Item], list[str] | None]:
    """The file's items, and for CSV its header (the keyword arguments' names)."""
    if fmt == "csv":
        return _csv(stream)
    if fmt == "jsonl":
        return _jsonl(stream), None
    return _text(stream), None


def items_of(values: Iterable[Any]) -> Iterator[Item]:
    """A Python iterable: each value is one call's single argument, line = position from 1."""
    return enumerate(values, 1)


def _jsonl(stream: IO[str]) -> Iterator[Item]:
    for line, raw in enumerate(stream, 1):
        text = raw.strip()
        if text:  # blank lines are not inputs, but they are counted
            yield line, text


def _text(stream: IO[str]) -> Iterator[Item]:
    for line, raw in enumerate(stream, 1):
        yield line, raw.rstrip("\r\n")


def _csv(stream: IO[str]) -> tuple[Iterator[Item], list[str] | None]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return iter(()), []
    except csv.Error as exc:
        return iter([(1, None, f"unreadable CSV header: {exc}")]), []
    if len(set(header)) != len(header) or not all(name.isidentifier() for name in header):
        bad = ", ".join(repr(n) for n in header)
        return iter([(1, header, f"CSV columns must be distinct names (keyword arguments): {bad}")]), []
    return _csv_rows(reader, len(header)), header


def _csv_rows(reader: Any, width: int) -> Iterator[Item]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, f"unreadable CSV row: {exc}"
            continue
        if not row:
            continue
        if len(row) != width:
            yield reader.line_num, row, f"{len(row)} fields where the header has {width}"
            continue
        yield reader.line_num, row


def input_json(fmt: str, header: list[str] | None, item: Item) -> str:
    """The item as a record's "input": the line's own JSON, the row as an object, the text."""
    raw = item[1]
    if len(item) == 2 and fmt == "jsonl":
        try:
            json.loads(raw)
        except ValueError:
            return json.dumps(raw)  # not JSON: shown as the string it is
        return str(raw)
    if len(item) == 2 and fmt == "csv" and header is not None:
        return json.dumps(dict(zip(header, raw)))  # noqa: B905  # lengths checked when read
    return _json_or_repr(raw)


def run_input(
    fn: Callable[..., Any], fmt: str, header: list[str] | None, item: Item
) -> tuple[int, bytes, float]:
    """In the worker: one input's call; its line, its JSON record, the seconds the call took."""
    line, raw = item[0], item[1]
    if len(item) == 3:
        raise InputError(f"line {line}: {item[2]}")
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if fmt == "jsonl":
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"line {line}: not valid JSON: {exc}") from None
        args, kwargs = _call_of(line, value)
        shown = raw
    elif fmt == "csv":
        assert header is not None
        kwargs = dict(zip(header, raw))  # noqa: B905  # lengths checked when read
        shown = json.dumps(kwargs)
    else:  # text, or a value of an iterable
        args = (raw,)
        shown = _json_or_repr(raw)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    try:
        result = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the result of type {type(value).__qualname__} cannot be written as JSON: {exc}"
        ) from None
    return line, f'{{"line": {line}, "input": {shown}, "result": {result}}}\n'.encode(), seconds


def _call_of(line: int, value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(value, dict) and value and set(value) <= {"args", "kwargs"}:
        args, kwargs = value.get("args", []), value.get("kwargs", {})
        if not isinstance(args, list):
            raise InputError(f'line {line}: "args" must be a list, not {type(args).__name__}')
        if not isinstance(kwargs, dict):
            raise InputError(f'line {line}: "kwargs" must be an object, not {type(kwargs).__name__}')
        return tuple(args), kwargs
    return (value,), {}


def _json_or_repr(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(repr(value))
