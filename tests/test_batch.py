"""The ``pool run`` command and `pool.batch`: formats, failures, resume after a kill or Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from _batch_jobs import double
from _support import Handshake
from conftest import wait_gone

from pool import BatchResult, batch

TESTS = Path(__file__).parent
ROOT = TESTS.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))


def pool_run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pool", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --- formats --------------------------------------------------------------------------


def test_json_lines_of_values_and_of_calls(tmp_path: Path) -> None:
    lines = ["1", '{"args": [2], "kwargs": {"b": 10}}', "", '{"args": [3]}']
    source = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:add", str(source), "-o", str(out), "--workers", "2", "--ordered")
    assert done.returncode == 0, done.stderr
    assert records(out) == [
        {"line": 1, "input": 1, "result": 1},
        {"line": 2, "input": {"args": [2], "kwargs": {"b": 10}}, "result": 12},
        {"line": 4, "input": {"args": [3]}, "result": 3},
    ]
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    assert "3 done, 0 failed" in done.stderr


def test_csv_columns_are_keyword_arguments_and_a_bad_row_fails_alone(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("name,count\nab,1\ncd,2,extra\nef,3\n")
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:label", str(source), "-o", str(out), "--ordered")
    assert done.returncode == 1, done.stderr
    assert [(r["line"], r["result"]) for r in records(out)] == [(2, "ab:2"), (4, "ef:6")]
    (error,) = records(tmp_path / "out.errors.jsonl")
    assert error["line"] == 3 and error["error"]["type"] == "InputError"
    assert "3 fields where the header has 2" in error["error"]["message"]


def test_text_lines_from_standard_input(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:shout", "-", "-o", str(out), "--ordered", stdin="a b\n\nc\n")
    assert done.returncode == 0, done.stderr
    assert [(r["line"], r["input"], r["result"]) for r in records(out)] == [
        (1, "a b", "A B"),
        (2, "", ""),
        (3, "c", "C"),
    ]


def test_odd_bytes_fail_their_own_line_only(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    # A byte-order mark, a line that is not UTF-8, NaN (not JSON), a stray \r inside a line.
    source.write_bytes(b'\xef\xbb\xbf1\n\xff\xfe\nNaN\n{"args":\r [4]}\n5\n')
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:double", str(source), "-o", str(out), "--ordered")
    assert done.returncode == 1, done.stderr
    assert [(r["line"], r["result"]) for r in records(out)] == [(1, 2), (4, 8), (5, 10)]
    errors = {r["line"]: r["error"] for r in records(tmp_path / "out.errors.jsonl")}
    assert sorted(errors) == [2, 3]
    assert "not valid UTF-8" in errors[2]["message"] and "NaN is not JSON" in errors[3]["message"]


def test_a_csv_row_over_several_lines_is_numbered_by_its_first(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    long = "x" * 300_000  # past the csv module's default field limit
    source.write_text(f'name,count\n"a\nb",1\n{long},2\n', encoding="utf-8-sig")
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:label", str(source), "-o", str(out), "--ordered")
    assert done.returncode == 0, done.stderr
    assert [(r["line"], r["result"]) for r in records(out)] == [(2, "a\nb:2"), (4, f"{long}:4")]


def test_results_come_in_input_order_with_ordered(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [str(i) for i in range(5000)])
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:double", str(source), "-o", str(out), "--ordered", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert [r["result"] for r in records(out)] == [2 * i for i in range(5000)]


# --- failures -------------------------------------------------------------------------


def test_every_input_gets_one_record_whatever_happens_to_it(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [str(i) for i in range(10)] + ["{oops"])
    out = tmp_path / "out.jsonl"
    done = pool_run("_batch_jobs:troubled", str(source), "-o", str(out), "--timeout", "1", "--workers", "2")
    assert done.returncode == 1, done.stderr
    results = {r["line"]: r["result"] for r in records(out)}
    errors = {r["line"]: r["error"] for r in records(tmp_path / "out.errors.jsonl")}
    assert sorted([*results, *errors]) == list(range(1, 12))  # each line once, in one file
    assert results == {line: 2 * (line - 1) for line in (1, 2, 3, 5, 8, 10)}
    assert errors[4]["type"] == "ValueError"
    assert "3 is not welcome" in errors[4]["message"] and "troubled" in errors[4]["traceback"]
    assert errors[6]["type"] == "WorkerLost" and errors[6]["cause"] == "the worker died"
    assert "exit code 3" in errors[6]["message"]
    assert errors[7]["type"] == "TypeError" and "cannot be written as JSON" in errors[7]["message"]
    assert errors[9]["type"] == "TaskTimeout" and errors[9]["cause"] == "it ran past its timeout"
    assert errors[11]["type"] == "InputError" and "not valid JSON" in errors[11]["message"]
    for kind in ("ValueError", "WorkerLost", "TypeError", "TaskTimeout", "InputError"):
        assert f"failed with {kind}: 1" in done.stderr


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("_batch_jobs", "expected MODULE:FUNCTION"),
        ("no_such_module:f", "cannot import module 'no_such_module'"),
        ("_batch_jobs:nothing", "module '_batch_jobs' has no 'nothing'"),
        ("_batch_jobs:NOT_CALLABLE", "is not callable"),
    ],
)
def test_a_bad_function_is_a_usage_error(tmp_path: Path, function: str, message: str) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    done = pool_run(function, str(source), "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    done = pool_run("_batch_jobs:shout", str(tmp_path / "missing.txt"))
    assert done.returncode == 2
    assert "missing.txt" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag", ["-o", "--errors"])
def test_writing_over_the_input_is_refused(tmp_path: Path, flag: str) -> None:
    source = write_lines(tmp_path / "in.jsonl", ["1"])
    done = pool_run("_batch_jobs:double", str(source), flag, str(source))
    assert done.returncode == 2 and "would be overwritten" in done.stderr
    assert source.read_text() == "1\n"


def test_resuming_over_an_output_changed_since_is_refused(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [str(i) for i in range(50)])
    out = tmp_path / "out.jsonl"
    assert pool_run("_batch_jobs:double", str(source), "-o", str(out)).returncode == 0
    out.write_text("")
    done = pool_run("_batch_jobs:double", str(source), "-o", str(out), "--resume")
    assert done.returncode == 2 and "changed since" in done.stderr
    (tmp_path / "out.jsonl.journal").write_text("[1, 2]\n")
    done = pool_run("_batch_jobs:double", str(source), "-o", str(out), "--resume")
    assert done.returncode == 2 and "not a journal" in done.stderr


def test_resuming_with_another_function_is_refused(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.txt", ["a"])
    out = tmp_path / "out.jsonl"
    assert pool_run("_batch_jobs:shout", str(source), "-o", str(out)).returncode == 0
    done = pool_run("_batch_jobs:double", str(source), "-o", str(out), "--resume")
    assert done.returncode == 2
    assert "written for another job" in done.stderr
    assert records(out)[0]["result"] == "A"  # untouched


# --- resume -----------------------------------------------------------------------------


LINES = 3000
BLOCK_AT = 2000  # the number on line 2001


def _start_blocking_run(tmp_path: Path, extra: list[str]) -> tuple[subprocess.Popen[str], Handshake, Path]:
    source = write_lines(tmp_path / "in.txt", [str(i) for i in range(LINES)])
    handshake = Handshake(tmp_path)
    env = dict(
        ENV,
        POOL_TEST_FIFO=handshake.path,
        POOL_TEST_BLOCK_AT=str(BLOCK_AT),
        POOL_TEST_MARKER=_blocked_marker(tmp_path),
    )
    command = [
        sys.executable,
        "-m",
        "pool",
        "run",
        "_batch_jobs:block_once",
        str(source),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--workers",
        "2",
        "--sync-every",
        "0.01",
        "--progress-every",
        "0",
        "--chunk",
        "1",
        *extra,
    ]
    caller = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    return caller, handshake, source


def _blocked_marker(tmp_path: Path) -> str:
    """The file `block_once` leaves once it blocked: a resumed run does not block again."""
    return str(tmp_path / "blocked-once")


def _resume_blocking_run(tmp_path: Path, source: Path, extra: list[str]) -> subprocess.CompletedProcess[str]:
    """Resume what `_start_blocking_run` started, into the same output."""
    return pool_run(
        "_batch_jobs:block_once",
        str(source),
        "-o",
        str(tmp_path / "out.jsonl"),
        *extra,
        "--resume",
        env=dict(ENV, POOL_TEST_MARKER=_blocked_marker(tmp_path)),
    )


def _wait_until_committed(caller: subprocess.Popen[str], count: int) -> None:
    """Read the command's progress lines (one per commit) until ``count`` inputs are on disk."""
    assert caller.stderr is not None
    for line in caller.stderr:
        committed, _, rest = line.partition("/")
        if rest.startswith(f"{LINES:,} inputs") and int(committed.replace(",", "")) >= count:
            return
    raise AssertionError(f"the command ended before committing {count} inputs")


def _clean_run(tmp_path: Path, extra: list[str]) -> list[str]:
    clean = tmp_path / "clean"
    clean.mkdir()
    source = write_lines(clean / "in.txt", [str(i) for i in range(LINES)])
    done = pool_run("_batch_jobs:block_once", str(source), "-o", str(clean / "out.jsonl"), *extra)
    assert done.returncode == 0, done.stderr
    return (clean / "out.jsonl").read_text().replace(str(clean), str(tmp_path)).splitlines()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_resumed_run_ends_with_the_records_of_an_uninterrupted_one(tmp_path: Path, how: str) -> None:
    caller, handshake, source = _start_blocking_run(tmp_path, ["--ordered"])
    try:
        handshake.wait()  # line 2001 is running, and blocks
        _wait_until_committed(caller, BLOCK_AT)  # lines 1..2000 are on disk
        family = psutil.Process(caller.pid).children(recursive=True)
        caller.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
        _, rest = caller.communicate(timeout=60)
        if how == "SIGINT":
            assert caller.returncode == 130, rest
            assert "interrupted" in rest and "--resume" in rest
        else:
            assert caller.returncode == -signal.SIGKILL
        assert not wait_gone(family, timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.communicate()
    out = tmp_path / "out.jsonl"
    resumed = _resume_blocking_run(tmp_path, source, ["--ordered"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"{BLOCK_AT:,} already done before" in resumed.stderr
    assert out.read_text().splitlines() == _clean_run(tmp_path, ["--ordered"])


def test_an_unordered_run_resumes_without_a_duplicate_or_a_gap(tmp_path: Path) -> None:
    caller, handshake, source = _start_blocking_run(tmp_path, [])
    try:
        handshake.wait()
        _wait_until_committed(caller, 1000)
        caller.kill()
        caller.communicate(timeout=60)
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.communicate()
    out = tmp_path / "out.jsonl"
    resumed = _resume_blocking_run(tmp_path, source, [])
    assert resumed.returncode == 0, resumed.stderr
    lines = [r["line"] for r in records(out)]
    assert sorted(lines) == list(range(1, LINES + 1))
    assert sorted(out.read_text().splitlines()) == sorted(_clean_run(tmp_path, []))


# --- the Python API -----------------------------------------------------------------------


def test_batch_over_an_iterable(tmp_path: Path) -> None:
    result = batch(double, range(100), tmp_path / "out.jsonl", workers=2, ordered=True, progress=False)
    assert isinstance(result, BatchResult)
    assert result.ok and result.done == 100 and not result.failed
    assert [r["result"] for r in records(tmp_path / "out.jsonl")] == [2 * i for i in range(100)]
    again = batch(double, range(100), tmp_path / "out.jsonl", resume=True, progress=False)
    assert again.skipped == 100 and again.done == 0


def test_a_resumed_iterable_names_the_line_of_a_value_that_cannot_be_pickled(tmp_path: Path) -> None:
    import threading

    values: list[Any] = [*range(10), threading.Lock(), 11]
    first = batch(double, values[:5], tmp_path / "out.jsonl", progress=False)
    assert first.done == 5
    # The same job, longer now: lines 1-5 are done, the lock is line 11.
    result = batch(double, values, tmp_path / "out.jsonl", resume=True, progress=False)
    assert result.skipped == 5 and result.failed == {"SerializationError": 1}
    (error,) = records(tmp_path / "out.errors.jsonl")
    assert error["line"] == 11


def test_batch_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        batch(5, [], tmp_path / "out.jsonl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        batch(double, [], tmp_path / "out.jsonl", workers=0)
    with pytest.raises(ValueError, match="must differ"):
        batch(double, [], tmp_path / "out.jsonl", errors=tmp_path / "out.jsonl")
