"""Worker logging reaches the caller's handlers; worker output is not lost."""

from __future__ import annotations

import logging

import pytest
from _tasks import log_and_return, print_then_die

from pool import Pool, WorkerLost


def test_worker_records_reach_the_callers_handlers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with Pool(1) as p:
        pid = p.submit(log_and_return, "hello").result(timeout=60)
    # Records travel on the same pipe as the result, before it: they are in.
    records = [r for r in caplog.records if r.name == "tests.worker"]
    assert [r.getMessage() for r in records] == [
        "from the worker: hello",
        "an info line",
        "with a traceback",
    ]
    assert all(r.process == pid for r in records)
    assert all(getattr(r, "task", None) == "_tasks.log_and_return" for r in records)
    assert records[2].exc_text is not None and "KeyError: 'logged'" in records[2].exc_text
    assert "KeyError: 'logged'" in caplog.text


def test_workers_log_at_the_callers_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Pool(1) as p:
        p.submit(log_and_return, "quiet").result(timeout=60)
    messages = [r.getMessage() for r in caplog.records if r.name == "tests.worker"]
    assert "an info line" not in messages
    assert "from the worker: quiet" in messages


def test_output_printed_before_a_crash_is_not_lost(capfd: pytest.CaptureFixture[str]) -> None:
    # spawn: the worker's stdout is this test's captured stdout.
    with Pool(1, mp_context="spawn") as p, pytest.raises(WorkerLost):
        p.submit(print_then_die, "last words").result(timeout=60)
    assert "last words" in capfd.readouterr().out
