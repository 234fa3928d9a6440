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
_FIELD_LIMIT = 1 << 30
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


def open_input(path: str) -> IO[bytes]:
    """The input file, or standard input for ``-``, as bytes; an OSError names the path.

    Lines are cut at ``\\n`` only and decoded one by one, so a stray ``\\r``
    or an invalid UTF-8 byte fails its own line, not the job.
    """
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def read_items(stream: IO[bytes], fmt: str) -> tuple[Iterator[Item], list[str] | None]:
    """The file's items, and for CSV its header (the keyword arguments' names)."""
    # Bytes that are not UTF-8 are kept as surrogates, and the line that has
    # them fails in the worker (see run_input), not the job here. A
    # byte-order mark is dropped.
    if fmt == "csv":
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        return _csv(text)
    # Lines end at \n only: a stray \r inside a line does not cut it in two.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="\n")
    if fmt == "jsonl":
        return _jsonl(text), None
    return _text(text), None


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
        yield line, raw.rstrip("\n").removesuffix("\r")


_NOT_UTF8 = "not valid UTF-8 text"


def _csv(stream: IO[str]) -> tuple[Iterator[Item], list[str] | None]:
    # A field may be as long as a line may: the default limit (128 KiB) is not the file's.
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
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
        line = reader.line_num + 1  # a row spanning several lines is numbered by its first
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, None, f"unreadable CSV row: {exc}"
            continue
        if not row:
            continue
        if len(row) != width:
            yield line, row, f"{len(row)} fields where the header has {width}"
            continue
        try:
            "".join(row).encode("utf-8")
        except UnicodeEncodeError:  # surrogates: bytes that were not UTF-8
            shown = [f.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for f in row]
            yield line, shown, _NOT_UTF8
            continue
        yield line, row


def input_json(fmt: str, header: list[str] | None, item: Item) -> str:
    """The item as a record's "input": the line's own JSON, the row as an object, the text."""
    raw = item[1]
    if len(item) == 2 and fmt == "jsonl":
        try:
            value = _DECODER.decode(raw)
            raw.encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            return json.dumps(raw)  # not JSON: shown as the string it is
        return str(raw) if "\r" not in raw else json.dumps(value)
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
    if fmt in ("jsonl", "text"):
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # surrogates: bytes that were not UTF-8
            raise InputError(f"line {line}: {_NOT_UTF8}") from None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if fmt == "jsonl":
        try:
            value = _DECODER.decode(raw)
        except ValueError as exc:
            raise InputError(f"line {line}: not valid JSON: {exc}") from None
        args, kwargs = _call_of(line, value)
        # As written, unless a stray \r (JSON space) would split the record's line.
        shown = raw if "\r" not in raw else json.dumps(value)
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
        result = _ENCODER.encode(value)
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
        return _ENCODER.encode(value)
    except (TypeError, ValueError):
        return json.dumps(repr(value))


def _no_constant(name: str) -> Any:
    # NaN and Infinity parse in Python's json, but no JSON reader reads them back.
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads and json.dumps build a new decoder or encoder for
# every call given an option, which costs more than the call itself.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(allow_nan=False)
