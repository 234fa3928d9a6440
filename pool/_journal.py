"""The batch job's output files and the journal that makes them resumable.

Records are appended to the output and errors files as whole lines, each
batch of lines in one ``os.write``. Every so often the files are flushed to
disk (``fsync``) and their sizes appended to the journal, itself synced: a
*commit*. What lies past the last commit may be torn (the job was killed
mid-write, or the machine died before the data reached the disk), so a
resumed job first cuts both files back to the last commit, then reads which
input lines they hold, and runs only the others. Whatever happened, every
line ends up in exactly one record, complete.

The journal is JSON Lines: a header naming the job (function, input file,
its size and modification time, format), then one commit per line.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

JOURNAL_VERSION = 1

# Records start with their line number, as `record_line` writes them, so a
# resume reads them without parsing the whole JSON.
_LINE = re.compile(rb'^\{"line": (\d+),')


class JournalMismatch(Exception):
    """The journal belongs to another job: another function, input or output."""


@dataclass
class Resumed:
    done: set[int]  # input lines that already have a record
    outputs: int  # records in the output file
    errors: int  # records in the errors file


def journal_path(output: str) -> str:
    return output + ".journal"


def errors_path(output: str) -> str:
    base = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return base + ".errors.jsonl"


class RecordFiles:
    """The output and errors files, appended to and committed through the journal."""

    def __init__(self, output: str, errors: str, header: dict[str, Any], resume: bool) -> None:
        self.output = output
        self.errors = errors
        self.journal = journal_path(output)
        self.resumed = Resumed(set(), 0, 0)
        committed = _last_commit(self.journal, header) if resume else None
        self._out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._err = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if committed is None:
            # The new journal first: killed before the files are emptied, a
            # resume finds a journal without commits and empties them itself.
            self._journal = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            self._append_journal(header)
            os.ftruncate(self._out, 0)
            os.ftruncate(self._err, 0)
        else:
            files = ((self._out, output, committed["output"]), (self._err, errors, committed["errors"]))
            for fd, path, size in files:
                actual = os.fstat(fd).st_size
                if actual < size:
                    raise JournalMismatch(
                        f"{path} holds {actual} bytes, fewer than the {size} the journal committed: "
                        "it was changed since; run without --resume to start over"
                    )
                os.ftruncate(fd, size)
            self.resumed = Resumed(set(), 0, 0)
            self.resumed.outputs = _read_lines(output, self.resumed.done)
            self.resumed.errors = _read_lines(errors, self.resumed.done)
            self._journal = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
        # Filled by the thread iterating the results, drained by the one
        # committing: deque's append and popleft need no lock.
        self._pending: deque[tuple[bytes, bool]] = deque()
        self.written = 0  # records written by this run
        self.written_errors = 0  # of which failures

    def add(self, record: bytes, error: bool) -> None:
        self._pending.append((record, error))

    def flush(self) -> None:
        """Write what was added, whole lines, one write per file (not yet durable)."""
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for _ in range(len(self._pending)):
            record, error = self._pending.popleft()
            (errors if error else outputs).append(record)
        if outputs:
            _write_all(self._out, b"".join(outputs))
        if errors:
            _write_all(self._err, b"".join(errors))
        self.written += len(outputs) + len(errors)
        self.written_errors += len(errors)

    def commit(self, complete: bool = False) -> None:
        """Make everything written durable, then record the files' sizes in the journal."""
        self.flush()
        os.fsync(self._out)
        os.fsync(self._err)
        entry: dict[str, Any] = {
            "output": os.fstat(self._out).st_size,
            "errors": os.fstat(self._err).st_size,
            "done": len(self.resumed.done) + self.written,
        }
        if complete:
            entry["complete"] = True
        self._append_journal(entry)

    def close(self) -> None:
        for fd in (self._out, self._err, self._journal):
            os.close(fd)

    def _append_journal(self, entry: dict[str, Any]) -> None:
        _write_all(self._journal, (json.dumps(entry) + "\n").encode())
        os.fsync(self._journal)


def record_line(line: int, input_json: str, key: str, value_json: str) -> bytes:
    """One record, the way `_LINE` reads it back: the line number first."""
    return f'{{"line": {line}, "input": {input_json}, "{key}": {value_json}}}\n'.encode()


def _last_commit(journal: str, header: dict[str, Any]) -> dict[str, Any] | None:
    """The last commit of a journal written for this very job; None without one."""
    try:
        with open(journal, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    entries = []
    for text in lines:
        try:
            entry = json.loads(text)
        except ValueError:
            break  # a torn last line: the commit it was writing did not happen
        if not isinstance(entry, dict):
            break
        entries.append(entry)
    if not lines or (not entries and len(lines) == 1 and lines[0].startswith('{"journal"')):
        return None  # created, then killed before its header was whole
    if not entries or entries[0].get("journal") != JOURNAL_VERSION:
        raise JournalMismatch(f"{journal} is not a journal this version of pool run wrote; move it away")
    written = entries[0]
    for key in ("function", "input", "format", "output", "errors"):
        if written.get(key) != header.get(key):
            raise JournalMismatch(
                f"the journal {journal} was written for another job "
                f"({key}: {written.get(key)!r}, now {header.get(key)!r}); "
                "run without --resume to start over, or delete the journal"
            )
    commits = [e for e in entries[1:] if isinstance(e, dict) and "output" in e]
    if not commits:
        return {"output": 0, "errors": 0}
    return commits[-1]


def _read_lines(path: str, done: set[int]) -> int:
    count = 0
    with open(path, "rb") as f:
        for text in f:
            match = _LINE.match(text)
            if match is not None:
                done.add(int(match.group(1)))
                count += 1
    return count


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
